"""Client core <-> server core: every command, with simple and with structured
replies, and the error replies of proto.md "Error values" / "Block size
constraints"."""

from __future__ import annotations

import random

import pytest
from nbdpair import ALL_FLAGS, Pair, make_disk

from blockyard.errors import LocalProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd.client_events import (
    BlockStatusChunk,
    Closed,
    ErrorChunk,
    HoleChunk,
    ReadChunk,
    RequestDone,
)
from blockyard.nbd.events import Disconnect

Cmd, F, TF = c.Cmd, c.CmdFlag, c.TransmissionFlag
KiB, MiB = 1024, 1 << 20
MODES = pytest.mark.parametrize("structured", [False, True], ids=["simple", "structured"])


def ready(structured: bool, disk=None, meta: tuple[str, ...] = ()) -> Pair:  # type: ignore[no-untyped-def]
    p = Pair([disk] if disk is not None else None)
    p.handshake(disk.spec.name if disk is not None else "disk", structured=structured, meta=meta)
    return p


def done(events: list[object]) -> RequestDone:
    last = events[-1]
    assert isinstance(last, RequestDone), events
    return last


def read_back(p: Pair, offset: int, length: int) -> bytes:
    events = p.call(p.client.read(offset, length))
    assert done(events).error == 0
    out = bytearray(length)
    for e in events:
        if isinstance(e, ReadChunk):
            out[e.offset - offset:e.offset - offset + len(e.data)] = e.data
    return bytes(out)


@MODES
@pytest.mark.parametrize("size", [1, 4096, 100 * KiB, 3 * MiB + 5])
def test_write_then_read(structured: bool, size: int) -> None:
    p = ready(structured, make_disk("disk", 4 * MiB))
    data = random.Random(size).randbytes(size)
    assert done(p.call(p.client.write(7, data))).error == 0
    assert p.disk.data[7:7 + size] == data
    assert read_back(p, 7, size) == data


@MODES
def test_fua_write_and_flush(structured: bool) -> None:
    p = ready(structured)
    assert done(p.call(p.client.write(0, b"abc", fua=True))).error == 0
    assert done(p.call(p.client.flush())) == RequestDone(2, Cmd.FLUSH, 0)
    assert p.disk.flushes == 1


@MODES
@pytest.mark.parametrize("how", ["trim", "zeroes", "zeroes-no-hole", "zeroes-fast"])
def test_trim_and_write_zeroes(structured: bool, how: str) -> None:
    p = ready(structured)
    p.call(p.client.write(0, b"\xff" * 8192))
    if how == "trim":
        cookie = p.client.trim(0, 4096)
    else:
        cookie = p.client.write_zeroes(0, 4096, no_hole=how.endswith("no-hole"),
                                       fast=how.endswith("fast"))
    assert done(p.call(cookie)).error == 0
    assert p.disk.data[:8192] == bytes(4096) + b"\xff" * 4096


@MODES
def test_cache(structured: bool) -> None:
    p = ready(structured)
    assert done(p.call(p.client.cache(0, 65536))).error == 0


def test_sparse_structured_read_has_holes_and_data() -> None:
    p = ready(True, make_disk("disk", MiB))
    p.app.sparse = True
    p.call(p.client.write(8192, b"\x01" * 4096))
    events = p.call(p.client.read(0, 16384))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["HoleChunk", "ReadChunk", "HoleChunk", "RequestDone"]
    assert events[0] == HoleChunk(2, 0, 8192) and events[2] == HoleChunk(2, 12288, 4096)
    assert read_back(p, 0, 16384) == bytes(8192) + b"\x01" * 4096 + bytes(4096)


def test_df_read_is_one_chunk() -> None:
    p = ready(True)
    p.app.sparse = True
    p.call(p.client.write(0, b"\x02" * 10))
    events = p.call(p.client.read(0, 65536, df=True))
    assert [type(e).__name__ for e in events] == ["ReadChunk", "RequestDone"]


@pytest.mark.parametrize("req_one", [False, True])
def test_block_status(req_one: bool) -> None:
    p = ready(True, meta=("base:allocation",))
    p.call(p.client.write(4096, b"\x01" * 4096))
    events = p.call(p.client.block_status(0, 3 * 4096, req_one=req_one))
    (status,) = [e for e in events if isinstance(e, BlockStatusChunk)]
    hole = c.STATE_HOLE | c.STATE_ZERO
    want = [(4096, hole)] if req_one else [(4096, hole), (4096, 0), (4096, hole)]
    assert status.extents == want and status.context_id == 1
    assert done(events).error == 0


def test_disconnect() -> None:
    p = ready(True)
    p.client.disconnect()
    assert p.pump() == []
    assert isinstance(p.app.server_events[-1], Disconnect)
    with pytest.raises(LocalProtocolError):
        p.client.read(0, 1)
    p.client.receive_eof()
    assert p.pump() == [Closed("disconnected")]
    assert p.client.state.value == "closed"
    with pytest.raises(LocalProtocolError):
        p.client.next_event()


def test_disconnect_with_requests_in_flight_still_gets_their_replies() -> None:
    p = ready(False)
    p.app.hold = True
    cookie = p.client.read(0, 10)
    p.pump()
    p.client.disconnect()
    p.pump()
    p.app.release([cookie])
    assert done(p.pump()).cookie == cookie
    p.client.receive_eof()
    assert isinstance(p.client.next_event(), Closed)


# ---- errors ---------------------------------------------------------------------------------
def error_of(p: Pair, cookie: int, structured: bool) -> int:
    events = p.call(cookie)
    err = done(events).error
    chunks = [e for e in events if isinstance(e, ErrorChunk)]
    assert len(chunks) == (1 if structured and err else 0)  # structured errors carry a message
    assert not chunks or (chunks[0].error == err and chunks[0].message)
    return err


@MODES
@pytest.mark.parametrize(("cmd", "offset", "length", "flags", "errno"), [
    (Cmd.READ, MiB - 10, 11, 0, c.EINVAL),  # "read ... beyond the size: EINVAL"
    (Cmd.WRITE, MiB - 10, 11, 0, c.ENOSPC),  # "write ... beyond the size: ENOSPC"
    (Cmd.WRITE_ZEROES, MiB, 1, 0, c.ENOSPC),
    (Cmd.READ, 0, 64 * KiB + 1, 0, c.EINVAL),  # above max_block
    (Cmd.WRITE, 0, 4, 1 << 7, c.EINVAL),  # unknown flag
    (Cmd.TRIM, 0, 4, 1 << 15, c.EINVAL),
    (Cmd.READ, 0, 4, 1 << 7, c.EINVAL),  # bits 6..15: once missed by an IntFlag mask
    (Cmd.WRITE_ZEROES, 0, 4, 1 << 12, c.EINVAL),
    (Cmd.READ, 0, 4, F.REQ_ONE, c.EINVAL),  # flag not valid for READ
    (Cmd.FLUSH, 0, 0, F.NO_HOLE, c.EINVAL),
    (Cmd.RESIZE, 0, 0, 0, c.EINVAL),  # unknown / unsupported command
    (9, 0, 0, 0, c.EINVAL),
    (0xFFFF, 0, 0, 0, c.EINVAL),
    (Cmd.BLOCK_STATUS, 0, 4096, 0, c.EINVAL),  # no meta context negotiated
])
def test_request_errors(structured: bool, cmd: int, offset: int, length: int, flags: int,
                        errno: int) -> None:
    p = ready(structured, make_disk("disk", MiB, max_block=64 * KiB))
    payload = bytes(length) if cmd == Cmd.WRITE else None
    cookie = p.client.request(cmd, offset, length, flags, payload, check=False)
    assert error_of(p, cookie, structured) == errno
    assert read_back(p, 0, 4) == bytes(4)  # the connection goes on


def test_df_without_structured_is_einval() -> None:
    p = ready(False)
    assert error_of(p, p.client.request(Cmd.READ, 0, 4, F.DF, check=False), False) == c.EINVAL


@MODES
@pytest.mark.parametrize(("flags", "cmd", "req_flags"), [
    (ALL_FLAGS & ~TF.SEND_FAST_ZERO, Cmd.WRITE_ZEROES, F.FAST_ZERO),
    (ALL_FLAGS & ~TF.SEND_FLUSH, Cmd.FLUSH, 0),
    (ALL_FLAGS & ~TF.SEND_TRIM, Cmd.TRIM, 0),
    (ALL_FLAGS & ~TF.SEND_WRITE_ZEROES, Cmd.WRITE_ZEROES, 0),
])
def test_unadvertised_commands_are_einval(structured: bool, flags: int, cmd: int,
                                          req_flags: int) -> None:
    p = ready(structured, make_disk("disk", MiB, flags))
    length = 0 if cmd == Cmd.FLUSH else 4096
    with pytest.raises(LocalProtocolError):
        p.client.request(cmd, 0, length, req_flags)
    cookie = p.client.request(cmd, 0, length, req_flags, check=False)
    assert error_of(p, cookie, structured) == c.EINVAL


@MODES
@pytest.mark.parametrize("cmd", [Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES])
def test_writes_to_a_read_only_export_are_eperm(structured: bool, cmd: int) -> None:
    p = ready(structured, make_disk("ro", MiB, ALL_FLAGS | TF.READ_ONLY))
    payload = b"x" * 512 if cmd == Cmd.WRITE else None
    with pytest.raises(LocalProtocolError):
        p.client.request(cmd, 0, 512, 0, payload)
    cookie = p.client.request(cmd, 0, 512, 0, payload, check=False)
    assert error_of(p, cookie, structured) == c.EPERM
    assert p.disk.data[:512] == bytes(512)


@MODES
@pytest.mark.parametrize("size", [64 * KiB + 1, 200 * KiB])
def test_oversized_write_is_consumed_and_the_connection_continues(structured: bool,
                                                                  size: int) -> None:
    p = ready(structured, make_disk("disk", MiB, max_block=64 * KiB))
    with pytest.raises(LocalProtocolError):
        p.client.write(0, b"\xaa" * size)
    cookie = p.client.request(Cmd.WRITE, 0, size, 0, b"\xaa" * size, check=False)
    nxt = p.client.write(0, b"ok")
    events = p.pump()
    results = {e.cookie: e.error for e in events if isinstance(e, RequestDone)}
    assert results == {cookie: c.EINVAL, nxt: 0}
    assert p.disk.data[:3] == b"ok\x00"


@MODES
@pytest.mark.parametrize(("cmd", "offset", "length"), [
    (Cmd.READ, 1, 512), (Cmd.READ, 0, 100), (Cmd.WRITE, 512, 100), (Cmd.WRITE, 3, 512),
    (Cmd.TRIM, 256, 512), (Cmd.WRITE_ZEROES, 0, 1000), (Cmd.CACHE, 1, 1)])
def test_misaligned_requests_with_min_block(structured: bool, cmd: int, offset: int,
                                            length: int) -> None:
    p = ready(structured, make_disk("disk", MiB, min_block=512))
    assert p.client.export is not None and p.client.export.min_block == 512
    payload = b"\x55" * length if cmd == Cmd.WRITE else None
    with pytest.raises(LocalProtocolError):
        p.client.request(cmd, offset, length, 0, payload)
    cookie = p.client.request(cmd, offset, length, 0, payload, check=False)
    assert error_of(p, cookie, structured) == c.EINVAL
    assert not any(p.disk.data[:2048])
    assert done(p.call(p.client.write(512, b"\x01" * 512))).error == 0  # aligned is fine


# ---- pipelining ---------------------------------------------------------------------------------
@MODES
def test_64_pipelined_requests_completed_out_of_order(structured: bool) -> None:
    p = ready(structured, make_disk("disk", 4 * MiB))
    rng = random.Random(64)
    p.app.hold = True
    expect: dict[int, bytes | None] = {}
    for i in range(64):
        if i % 2:
            expect[p.client.read(i * 4096, 4096)] = bytes([i // 2]) * 4096
        else:
            expect[p.client.write((i + 1) * 4096, bytes([i // 2]) * 4096)] = None
    assert p.pump() == [] and p.client.in_flight == 64
    order = list(p.app.held)
    rng.shuffle(order)
    p.app.release(order)
    events = p.pump()
    finished = [e.cookie for e in events if isinstance(e, RequestDone)]
    assert finished == order and p.client.in_flight == 0
    for e in events:
        if isinstance(e, ReadChunk):
            assert e.data == expect[e.cookie]


def test_cookies_explicit_and_unique() -> None:
    p = ready(False)
    p.app.hold = True
    assert p.client.read(0, 1, ) == 1
    assert p.client.request(Cmd.READ, 0, 1, cookie=1 << 63) == 1 << 63
    with pytest.raises(LocalProtocolError):
        p.client.request(Cmd.READ, 0, 1, cookie=1)
    with pytest.raises(LocalProtocolError):
        p.client.request(Cmd.READ, 0, 1, cookie=1 << 64)
    p.pump()
    p.app.release([1, 1 << 63])
    assert [e.cookie for e in p.pump() if isinstance(e, RequestDone)] == [1, 1 << 63]
