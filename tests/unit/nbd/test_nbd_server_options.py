"""The server core against malformed or unusual options, sent as raw bytes by the
client core's ``send_option`` or straight into the server (proto.md "Option types")."""

from __future__ import annotations

import pytest
from nbdpair import ALL_FLAGS, Pair, make_disk

from blockyard.errors import RemoteProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client_events import MetaContext, OptionAck, OptionError, Ready, RequestDone
from blockyard.nbd.events import NEED_DATA

Opt, Rep = c.Opt, c.Rep
U32, U16 = wire.U32.pack, wire.U16.pack


def negotiating(structured: bool = False) -> Pair:
    p = Pair([make_disk("disk"), make_disk("other")])
    p.pump()
    if structured:
        p.client.structured_reply()
        p.pump()
    return p


def single_error(p: Pair) -> OptionError:
    events = p.pump()
    assert len(events) == 1 and isinstance(events[0], OptionError), events
    return events[0]


@pytest.mark.parametrize("data", [
    b"",  # no name length
    U32(10) + b"disk",  # name runs past the data
    wire.lp_string("disk") + U16(2) + U16(0),  # count says 2 requests, 1 present
    wire.lp_string("disk") + U16(0) + b"x",  # trailing byte
    wire.lp_string(b"\xff\xfe") + U16(0),  # not UTF-8
    wire.lp_string("disk"),  # ends after the name (struct.error once escaped)
    wire.lp_string("disk") + b"\x00",  # a 1-byte count
])
def test_malformed_info_is_err_invalid(data: bytes) -> None:
    p = negotiating()
    p.client.send_option(Opt.INFO, data)
    assert single_error(p).reply == Rep.ERR_INVALID
    p.client.go("disk")
    assert isinstance(p.pump()[-1], Ready)


@pytest.mark.parametrize("opt", [Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT])
@pytest.mark.parametrize("data", [
    b"",
    wire.lp_string("disk") + U32(2) + wire.lp_string("base:allocation"),  # count too high
    wire.meta_request("disk", ["base:allocation"]) + b"z",  # trailing byte
    wire.lp_string("disk") + U32(1) + U32(5000) + b"x" * 5000,  # query above 4096 bytes
    wire.lp_string("disk"),  # ends after the name (struct.error once escaped)
])
def test_malformed_meta_context_is_err_invalid(opt: int, data: bytes) -> None:
    p = negotiating(structured=True)
    p.client.send_option(opt, data)
    assert single_error(p).reply == Rep.ERR_INVALID
    p.client.go("disk")
    assert isinstance(p.pump()[-1], Ready)


def test_option_with_huge_length_is_skipped_with_err_too_big() -> None:
    p = negotiating()
    p.server.receive_data(wire.OPTION.pack(c.IHAVEOPT, Opt.INFO, 1 << 20) + bytes(1000))
    assert p.server.next_event() is NEED_DATA
    assert p.server.data_to_send() == []  # nothing until the whole option is skipped
    p.server.receive_data(bytes((1 << 20) - 1000))
    assert p.server.next_event() is NEED_DATA
    (reply,) = p.server.data_to_send()
    assert wire.OPTION_REPLY.unpack_from(reply)[1:3] == (Opt.INFO, Rep.ERR_TOO_BIG)
    p.server.receive_data(wire.option(Opt.LIST))  # still parsing options
    assert p.server.next_event() is not NEED_DATA


def test_export_name_with_huge_length_is_fatal() -> None:
    p = negotiating()
    p.server.receive_data(wire.OPTION.pack(c.IHAVEOPT, Opt.EXPORT_NAME, 0xFFFFFFFF))
    with pytest.raises(RemoteProtocolError):
        p.server.next_event()


# ---- meta contexts across SET and GO (proto.md NBD_OPT_SET_META_CONTEXT, NBD_CMD_BLOCK_STATUS)
def block_status_error(p: Pair) -> int:
    done = p.call(p.client.request(c.Cmd.BLOCK_STATUS, 0, 4096, check=False))[-1]
    assert isinstance(done, RequestDone)
    return done.error


def test_set_and_go_with_the_default_name_keep_the_contexts() -> None:
    p = negotiating(structured=True)
    p.client.set_meta_context("", ["base:allocation"])
    assert isinstance(p.pump()[0], MetaContext)
    p.client.go("")
    ready = p.pump()[-1]
    assert isinstance(ready, Ready) and ready.export.meta_contexts == {1: "base:allocation"}
    assert p.server.negotiated.meta_contexts == {1: "base:allocation"}
    assert block_status_error(p) == 0


def test_failed_set_meta_context_clears_the_selection() -> None:
    p = negotiating(structured=True)
    p.client.set_meta_context("disk", ["base:allocation"])
    p.pump()
    p.client.set_meta_context("nope", ["base:allocation"])
    assert single_error(p).reply == Rep.ERR_UNKNOWN
    p.client.go("disk")
    ready = p.pump()[-1]
    assert isinstance(ready, Ready) and ready.export.meta_contexts == {}
    assert block_status_error(p) == c.EINVAL


def test_set_meta_context_for_one_export_then_go_same_export_keeps_them() -> None:
    p = negotiating(structured=True)
    p.client.set_meta_context("other", ["base:allocation"])
    p.pump()
    p.client.go("other")
    assert p.pump()[-1].export.meta_contexts == {1: "base:allocation"}  # type: ignore[attr-defined]
    assert block_status_error(p) == 0


def test_list_meta_context_before_structured_is_allowed() -> None:
    p = negotiating()  # proto.md: SHOULD NOT, and the server MAY refuse; ours answers
    p.client.list_meta_context("disk", ["base:"])
    events = p.pump()
    assert isinstance(events[0], MetaContext) and events[-1] == OptionAck(Opt.LIST_META_CONTEXT)


def test_client_no_zeroes_not_advertised_is_fatal() -> None:
    p = Pair(server_flags=c.HandshakeFlag.FIXED_NEWSTYLE)
    p.server.data_to_send()
    p.server.receive_data(wire.CLIENT_FLAGS.pack(3))
    with pytest.raises(RemoteProtocolError):
        p.server.next_event()


# ---- request checks the spec words as SHOULD -------------------------------------------------
def test_trim_past_the_end_is_einval() -> None:
    p = Pair([make_disk("disk", 1 << 20, ALL_FLAGS)])
    p.handshake()
    done = p.call(p.client.request(c.Cmd.TRIM, (1 << 20) - 512, 1024, check=False))[-1]
    assert isinstance(done, RequestDone) and done.error == c.EINVAL


@pytest.mark.parametrize("cmd", [c.Cmd.CACHE, c.Cmd.WRITE_ZEROES, c.Cmd.TRIM])
def test_payloadless_commands_may_exceed_max_block(cmd: int) -> None:
    """proto.md "Block size constraints": for commands without a payload the client MAY
    ask for an effect length above the maximum payload; the server SHOULD NOT fail it
    unless it would need too many resources -- ours needs none (fallocate, fadvise)."""
    p = Pair([make_disk("disk", 1 << 20, ALL_FLAGS, max_block=65536)])
    p.handshake()
    done = p.call(p.client.request(cmd, 0, 131072, check=False))[-1]
    assert isinstance(done, RequestDone) and done.error == 0
