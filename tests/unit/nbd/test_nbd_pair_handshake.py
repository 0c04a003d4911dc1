"""Client core <-> server core: the handshake, option by option (proto.md "Handshake",
"Option types", "Metadata querying")."""

from __future__ import annotations

import pytest
from nbdpair import Pair, drain, make_disk

from blockyard.errors import LocalProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client import ClientState
from blockyard.nbd.client_events import (
    Closed,
    ExportInfo,
    Greeting,
    InfoBlockSize,
    InfoDescription,
    InfoName,
    MetaContext,
    OptionAck,
    OptionError,
    Ready,
    RequestDone,
    ServerEntry,
)
from blockyard.nbd.events import Disconnect, ListQuery

Opt, Rep = c.Opt, c.Rep


def only(events: list[object], kind: type) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


def test_greeting_and_client_flags() -> None:
    p = Pair()
    events = p.pump()
    assert events == [Greeting(3, True, True)]
    assert p.client.state is ClientState.OPTIONS
    assert p.server.negotiated.no_zeroes and p.server.state.value == "options"


@pytest.mark.parametrize(("want", "server_flags", "expect"), [
    (True, 3, True), (False, 3, False), (True, 1, False)])
def test_no_zeroes_only_when_both_sides_want_it(want: bool, server_flags: int,
                                                expect: bool) -> None:
    p = Pair(no_zeroes=want, server_flags=server_flags)
    (greeting,) = p.pump()
    assert isinstance(greeting, Greeting) and greeting.no_zeroes is expect
    assert p.server.negotiated.no_zeroes is expect


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name_with_and_without_no_zeroes(no_zeroes: bool) -> None:
    p = Pair(no_zeroes=no_zeroes)
    p.pump()
    p.client.export_name("disk")
    p.server.receive_data(b"".join(p.client.data_to_send()))
    p.serve()
    reply = b"".join(p.server.data_to_send())
    assert len(reply) == (10 if no_zeroes else 134)  # proto.md: 124 zeroes unless NO_ZEROES
    p.client.receive_data(reply)
    (ready,) = drain(p.client)
    assert isinstance(ready, Ready) and ready.option == Opt.EXPORT_NAME
    assert ready.export.size == 1 << 20 and ready.export.flags & c.TransmissionFlag.HAS_FLAGS
    p.disk.data[:5] = b"hello"  # the stream stays in step after the padding
    done = p.call(p.client.read(0, 5))
    assert done[0].data == b"hello" and done[1] == RequestDone(1, c.Cmd.READ, 0)  # type: ignore[attr-defined]


def test_export_name_refused_closes_the_connection() -> None:
    p = Pair()
    p.pump()
    p.client.export_name("nope")
    assert p.pump() == []
    assert p.server.state.value == "closed"
    p.client.receive_eof()
    (closed,) = drain(p.client)
    assert isinstance(closed, Closed) and "refused" in closed.reason


def test_info_then_go() -> None:
    p = Pair([make_disk("disk", 1 << 20, min_block=512)])
    p.pump()
    p.client.info("disk", [c.Info.NAME, c.Info.DESCRIPTION, c.Info.BLOCK_SIZE])
    events = p.pump()
    assert isinstance(events[0], ExportInfo) and events[0].size == 1 << 20
    assert InfoName(Opt.INFO, "disk") in events
    assert InfoDescription(Opt.INFO, "the disk export") in events
    assert InfoBlockSize(Opt.INFO, 512, 4096, 32 << 20) in events
    assert events[-1] == OptionAck(Opt.INFO)
    assert p.client.state is ClientState.OPTIONS and p.server.state.value == "options"
    p.client.go("disk")
    ready = p.pump()[-1]
    assert isinstance(ready, Ready) and ready.export.min_block == 512
    assert ready.export.block_size_advertised and p.server.state.value == "transmission"


def test_info_unknown_export_then_go_default() -> None:
    p = Pair()
    p.pump()
    p.client.info("nope")
    (err,) = p.pump()
    assert isinstance(err, OptionError) and err.reply == Rep.ERR_UNKNOWN and "nope" in err.message
    p.client.go("")  # the empty name selects the default export
    assert isinstance(p.pump()[-1], Ready)


def test_list() -> None:
    p = Pair([make_disk("a"), make_disk("b")])
    p.pump()
    p.client.list_exports()
    events = p.pump()
    assert events == [ServerEntry("a", "the a export"), ServerEntry("b", "the b export"),
                      OptionAck(Opt.LIST)]
    assert any(isinstance(e, ListQuery) for e in p.app.server_events)


def test_list_with_data_is_invalid_and_haggling_goes_on() -> None:
    p = Pair()
    p.pump()
    p.client.send_option(Opt.LIST, b"junk")
    (err,) = p.pump()
    assert isinstance(err, OptionError) and err.reply == Rep.ERR_INVALID
    p.client.list_exports()
    assert p.pump()[-1] == OptionAck(Opt.LIST)


@pytest.mark.parametrize("opt", [Opt.PEEK_EXPORT, Opt.EXTENDED_HEADERS, 12, 99, 0x7FFFFFFF])
def test_unknown_option_gets_err_unsup_and_negotiation_continues(opt: int) -> None:
    p = Pair()
    p.pump()
    p.client.send_option(opt, b"some data")
    (err,) = p.pump()
    assert isinstance(err, OptionError) and err.option == opt and err.reply == Rep.ERR_UNSUP
    p.client.go("disk")
    assert isinstance(p.pump()[-1], Ready)


def test_starttls_unsupported() -> None:
    p = Pair()
    p.pump()
    p.client.send_option(Opt.STARTTLS)
    (err,) = p.pump()
    assert isinstance(err, OptionError) and err.reply == Rep.ERR_UNSUP


def test_abort() -> None:
    p = Pair()
    p.pump()
    p.client.abort()
    assert p.pump() == [OptionAck(Opt.ABORT)]
    assert p.client.state is ClientState.DISCONNECTING
    assert isinstance(p.app.server_events[-1], Disconnect)
    p.client.receive_eof()
    assert isinstance(drain(p.client)[-1], Closed)


def test_structured_reply_once() -> None:
    p = Pair()
    p.pump()
    p.client.structured_reply()
    assert p.pump() == [OptionAck(Opt.STRUCTURED_REPLY)]
    assert p.client.structured and p.server.negotiated.structured
    p.client.send_option(Opt.STRUCTURED_REPLY)  # again: MAY be ERR_INVALID
    (err,) = p.pump()
    assert isinstance(err, OptionError) and err.reply == Rep.ERR_INVALID
    assert p.client.structured


def test_structured_reply_with_data_is_invalid() -> None:
    p = Pair()
    p.pump()
    p.client.send_option(Opt.STRUCTURED_REPLY, b"x")
    (err,) = p.pump()
    assert isinstance(err, OptionError) and err.reply == Rep.ERR_INVALID
    assert not p.client.structured and not p.server.negotiated.structured


# ---- meta contexts ------------------------------------------------------------------------
@pytest.mark.parametrize(("queries", "found"), [
    ((), ["base:allocation"]),
    (("base:",), ["base:allocation"]),
    (("base:allocation",), ["base:allocation"]),
    (("x-foo:bar", "qemu:dirty-bitmap:b"), []),  # unknown namespaces: ignored, not errors
    (("base:nosuch",), []),
    (("x-foo:", "base:allocation", "base:"), ["base:allocation"]),
])
def test_list_meta_context(queries: tuple[str, ...], found: list[str]) -> None:
    p = Pair()
    p.pump()
    p.client.structured_reply()
    p.pump()
    p.client.list_meta_context("disk", queries)
    events = p.pump()
    assert [e.name for e in only(events, MetaContext)] == found  # type: ignore[attr-defined]
    assert events[-1] == OptionAck(Opt.LIST_META_CONTEXT)


@pytest.mark.parametrize(("queries", "found"), [
    (("base:allocation",), ["base:allocation"]),
    (("base:allocation", "x-foo:bar", "base:nosuch"), ["base:allocation"]),
    (("base:",), []),  # "the server MUST ignore this form during NBD_OPT_SET_META_CONTEXT"
    ((), []),  # "If zero queries are sent, the server MUST select no metadata contexts"
])
def test_set_meta_context(queries: tuple[str, ...], found: list[str]) -> None:
    p = Pair()
    events = p.handshake(structured=True, meta=queries) if queries else None
    if events is None:
        p.pump()
        p.client.structured_reply()
        p.pump()
        p.client.set_meta_context("disk", ())
        events = p.pump()
        p.client.go("disk")
        events += p.pump()
    chosen = [e for e in only(events, MetaContext) if e.option == Opt.SET_META_CONTEXT]  # type: ignore[attr-defined]
    assert [e.name for e in chosen] == found  # type: ignore[attr-defined]
    ready = events[-1]
    assert isinstance(ready, Ready)
    assert sorted(ready.export.meta_contexts.values()) == found
    assert ready.export.meta_contexts == p.server.negotiated.meta_contexts


def test_set_meta_context_before_structured_is_invalid() -> None:
    p = Pair()
    p.pump()
    with pytest.raises(LocalProtocolError):
        p.client.set_meta_context("disk", ["base:allocation"])
    p.client.send_option(Opt.SET_META_CONTEXT, wire.meta_request("disk", ["base:allocation"]))
    (err,) = p.pump()
    assert isinstance(err, OptionError) and err.reply == Rep.ERR_INVALID
    assert p.client.state is ClientState.OPTIONS


def test_go_to_a_different_export_drops_the_contexts() -> None:
    p = Pair([make_disk("a"), make_disk("b")])
    p.pump()
    p.client.structured_reply()
    p.pump()
    p.client.set_meta_context("a", ["base:allocation"])
    assert isinstance(p.pump()[0], MetaContext)
    p.client.go("b")
    ready = p.pump()[-1]
    assert isinstance(ready, Ready) and ready.export.meta_contexts == {}
    assert p.server.negotiated.meta_contexts == {}
    with pytest.raises(LocalProtocolError):
        p.client.block_status(0, 4096)
    done = p.call(p.client.request(c.Cmd.BLOCK_STATUS, 0, 4096, check=False))
    assert done[-1].error == c.EINVAL  # type: ignore[attr-defined]


def test_set_meta_context_for_unknown_export_fails() -> None:
    p = Pair()
    p.pump()
    p.client.structured_reply()
    p.pump()
    p.client.set_meta_context("nope", ["base:allocation"])
    (err,) = p.pump()
    assert isinstance(err, OptionError) and err.reply == Rep.ERR_UNKNOWN


def test_go_unknown_export_then_go_again() -> None:
    p = Pair()
    p.pump()
    p.client.go("nope")
    (err,) = p.pump()
    assert isinstance(err, OptionError) and err.option == Opt.GO
    assert p.client.state is ClientState.OPTIONS and p.server.state.value == "options"
    p.client.go("disk")
    assert isinstance(p.pump()[-1], Ready)
