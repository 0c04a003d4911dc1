"""The client core in the handshake against crafted server bytes, and misuse by
its application (LocalProtocolError)."""

from __future__ import annotations

import pytest
from nbdcraft import feed, greeted, info_block_size, info_export, meta_reply, ready_client

from blockyard.errors import LocalProtocolError, RemoteProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client import ClientConnection, ClientState
from blockyard.nbd.client_events import (
    Closed,
    ExportInfo,
    InfoUnknown,
    OptionAck,
    OptionError,
    Ready,
    ServerEntry,
)

Opt, Rep, TF = c.Opt, c.Rep, c.TransmissionFlag
REPLY = wire.option_reply


@pytest.mark.parametrize(("greeting", "match"), [
    (wire.GREETING.pack(0x1122334455667788, c.IHAVEOPT, 3), "greeting magic"),
    (wire.GREETING.pack(c.NBDMAGIC, 0x00420281861253, 3), "oldstyle"),
    (wire.GREETING.pack(c.NBDMAGIC, 0x1234, 3), "newstyle magic"),
])
def test_bad_greetings(greeting: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        feed(ClientConnection(), greeting)


def test_unknown_handshake_flags_are_ignored_and_not_echoed() -> None:
    client = ClientConnection()
    feed(client, wire.greeting(0xFFFF))
    assert client.data_to_send() == [wire.CLIENT_FLAGS.pack(3)]


def test_not_fixed_newstyle_allows_export_name_only() -> None:
    client = ClientConnection()
    feed(client, wire.greeting(0))
    assert client.data_to_send() == [wire.CLIENT_FLAGS.pack(0)]
    with pytest.raises(LocalProtocolError):
        client.go("disk")
    client.export_name("disk")
    (ready,) = feed(client, wire.EXPORT_NAME_REPLY.pack(100, 1) + bytes(124))
    assert isinstance(ready, Ready) and ready.export.size == 100


def go_with(*replies: bytes) -> list[object]:
    client = greeted()
    client.go("disk")
    return feed(client, *replies)


ACK = REPLY(Opt.GO, Rep.ACK)
BAD = [
    ("reply magic", wire.OPTION_REPLY.pack(1, Opt.GO, Rep.ACK, 0), "option reply magic"),
    ("other option", REPLY(Opt.LIST, Rep.ACK), "while 7 is pending"),
    ("unknown reply type", REPLY(Opt.GO, 77), "not valid"),
    ("SERVER to GO", REPLY(Opt.GO, Rep.SERVER, wire.lp_string("x")), "not valid"),
    ("ACK with data", REPLY(Opt.GO, Rep.ACK, b"x"), "ACK with data"),
    ("ACK without INFO_EXPORT", ACK, "without NBD_INFO_EXPORT"),
    ("INFO_EXPORT short", REPLY(Opt.GO, Rep.INFO, bytes(11)), "length"),
    ("INFO_EXPORT no HAS_FLAGS", info_export(flags=0), "HAS_FLAGS"),
    ("INFO shorter than type", REPLY(Opt.GO, Rep.INFO, b"\x00"), "type field"),
    ("block size min 3", info_block_size(3, 4096, 3 << 20), "minimum"),
    ("block size min 128K", info_block_size(1 << 17, 1 << 17, 1 << 25), "minimum"),
    ("block size preferred 256", info_block_size(1, 256, 1 << 20), "preferred"),
    ("block size max not multiple", info_block_size(512, 4096, 1000000), "multiple"),
    ("max below min(preferred, size)", info_export(1 << 20) + info_block_size(1, 4096, 1024)
     + ACK, "below"),
    ("name not UTF-8", REPLY(Opt.GO, Rep.INFO, wire.U16.pack(1) + b"\xff"), "UTF-8"),
    ("reply too long", wire.OPTION_REPLY.pack(c.OPT_REPLY_MAGIC, Opt.GO, Rep.INFO, 1 << 30),
     "bytes"),
]


@pytest.mark.parametrize(("data", "match"), [v[1:] for v in BAD], ids=[v[0] for v in BAD])
def test_bad_go_replies(data: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        go_with(data)


def test_go_with_unknown_info_and_error_after_infos() -> None:
    events = go_with(info_export(), REPLY(Opt.GO, Rep.INFO, wire.U16.pack(99) + b"?"),
                     REPLY(Opt.GO, Rep.ERR_SHUTDOWN, b"going down"))
    assert isinstance(events[0], ExportInfo) and events[1] == InfoUnknown(Opt.GO, 99, b"?")
    assert events[2] == OptionError(Opt.GO, Rep.ERR_SHUTDOWN, "going down")


def test_small_export_may_have_a_small_maximum_block() -> None:
    ready = go_with(info_export(512), info_block_size(512, 4096, 512), ACK)[-1]
    assert isinstance(ready, Ready) and ready.export.max_block == 512


def test_go_minimal_success_uses_default_block_sizes() -> None:
    (info, ready) = go_with(info_export(12345, TF.HAS_FLAGS | TF.READ_ONLY), ACK)
    assert isinstance(ready, Ready) and ready.export.read_only
    assert (ready.export.min_block, ready.export.max_block) == (1, 32 << 20)
    assert not ready.export.block_size_advertised


@pytest.mark.parametrize(("data", "match"), [
    (REPLY(Opt.LIST, Rep.SERVER, b"\x00\x00"), "shorter"),
    (REPLY(Opt.LIST, Rep.SERVER, wire.U32.pack(9) + b"abc"), "exceeds"),
    (REPLY(Opt.LIST, Rep.META_CONTEXT, wire.U32.pack(0) + b"a:b"), "not valid"),
])
def test_bad_list_replies(data: bytes, match: str) -> None:
    client = greeted()
    client.list_exports()
    with pytest.raises(RemoteProtocolError, match=match):
        feed(client, data)


def test_list_reply_without_description() -> None:
    client = greeted()
    client.list_exports()
    events = feed(client, REPLY(Opt.LIST, Rep.SERVER, wire.lp_string("a")),
                  REPLY(Opt.LIST, Rep.ACK))
    assert events == [ServerEntry("a", ""), OptionAck(Opt.LIST)]


@pytest.mark.parametrize(("replies", "match"), [
    ([meta_reply(1, "base:allocation"), meta_reply(1, "base:other")], "given twice"),
    ([meta_reply(1, "noclon")], "namespace"),
    ([meta_reply(1, ":leaf")], "namespace"),
])
def test_bad_meta_context_replies(replies: list[bytes], match: str) -> None:
    client = ready_for_meta()
    client.set_meta_context("disk", ["base:allocation"])
    with pytest.raises(RemoteProtocolError, match=match):
        feed(client, *replies)


def ready_for_meta() -> ClientConnection:
    client = greeted()
    client.structured_reply()
    feed(client, REPLY(Opt.STRUCTURED_REPLY, Rep.ACK))
    return client


def test_failed_set_meta_context_clears_earlier_contexts() -> None:
    client = ready_for_meta()
    client.set_meta_context("disk", ["base:allocation"])
    feed(client, meta_reply(1, "base:allocation"), REPLY(Opt.SET_META_CONTEXT, Rep.ACK))
    client.set_meta_context("disk", ["base:allocation"])
    feed(client, REPLY(Opt.SET_META_CONTEXT, Rep.ERR_POLICY))
    client.go("disk")
    ready = feed(client, info_export(), ACK)[-1]
    assert isinstance(ready, Ready) and ready.export.meta_contexts == {}


def test_unsolicited_bytes_during_negotiation() -> None:
    client = greeted()
    with pytest.raises(RemoteProtocolError, match="none was expected"):
        feed(client, b"\x00")


@pytest.mark.parametrize(("opt", "expect"), [
    (Opt.ABORT, Closed("closed after NBD_OPT_ABORT")),
    (Opt.EXPORT_NAME, None)])
def test_server_closing_after_abort_or_export_name_is_clean(opt: int, expect: object) -> None:
    client = greeted()
    if opt == Opt.ABORT:
        client.abort()
    else:
        client.export_name("nope")
    client.receive_eof()
    (closed,) = feed(client)
    assert isinstance(closed, Closed) and (expect is None or closed == expect)


@pytest.mark.parametrize("state", ["greeting", "info"])
def test_server_closing_mid_handshake_is_an_error(state: str) -> None:
    client = ClientConnection() if state == "greeting" else greeted()
    if state == "info":
        client.info("disk")
    client.receive_eof()
    with pytest.raises(RemoteProtocolError, match="closed"):
        client.next_event()


def test_export_name_reply_without_has_flags() -> None:
    client = greeted()
    client.export_name("disk")
    with pytest.raises(RemoteProtocolError, match="HAS_FLAGS"):
        feed(client, wire.EXPORT_NAME_REPLY.pack(100, 0))


# ---- misuse by the application -----------------------------------------------------------------
def test_options_only_one_at_a_time_and_only_after_the_greeting() -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.list_exports()
    feed(client, wire.greeting(3))
    client.list_exports()
    with pytest.raises(LocalProtocolError):
        client.list_exports()
    with pytest.raises(LocalProtocolError):
        client.read(0, 1)


@pytest.mark.parametrize("call", [
    lambda cl: cl.export_name("x" * 4097),
    lambda cl: cl.go("disk", [3, 3]),
    lambda cl: cl.send_option(Opt.GO),
    lambda cl: cl.send_option(Opt.ABORT),
    lambda cl: cl.send_option(Opt.EXPORT_NAME, b"disk"),
    lambda cl: cl.set_meta_context("disk", ["base:allocation"]),  # not structured
    lambda cl: cl.disconnect(),
])
def test_option_misuse(call) -> None:  # type: ignore[no-untyped-def]
    client = greeted()
    with pytest.raises(LocalProtocolError):
        call(client)
    assert client.state is ClientState.OPTIONS and client.data_to_send() == []


def test_no_options_after_go_and_no_requests_after_disc() -> None:
    client = ready_client(False)
    with pytest.raises(LocalProtocolError):
        client.list_exports()
    client.disconnect()
    with pytest.raises(LocalProtocolError):
        client.disconnect()
    with pytest.raises(LocalProtocolError):
        client.read(0, 1)


def test_data_after_end_of_input_is_misuse() -> None:
    client = greeted()
    client.receive_eof()
    with pytest.raises(LocalProtocolError):
        client.receive_data(b"x")
