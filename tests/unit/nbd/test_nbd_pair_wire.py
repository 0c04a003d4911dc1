"""Bytes arriving in awkward pieces, on both cores: half-sent requests, payloads
fed byte by byte or through get_buffer/buffer_updated, bad magic."""

from __future__ import annotations

import random

import pytest
from nbdpair import Pair, deadline, drain, feed_zero_copy, make_disk

from blockyard.errors import RemoteProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client_events import ReadChunk, RequestDone
from blockyard.nbd.events import NEED_DATA, Request

Cmd = c.Cmd
KiB = 1024


def ready(structured: bool = False, **kw: object) -> Pair:
    p = Pair([make_disk("disk", 4 << 20)], **kw)  # type: ignore[arg-type]
    p.handshake(structured=structured)
    return p


def test_half_sent_request_emits_nothing() -> None:
    p = ready()
    header = wire.request(Cmd.READ, 5, 0, 512)
    p.server.receive_data(header[:27])
    assert p.server.next_event() is NEED_DATA
    assert p.server.data_to_send() == [] and p.server.has_pending_input()
    p.server.receive_data(header[27:])
    event = p.server.next_event()
    assert isinstance(event, Request) and (event.cookie, event.length) == (5, 512)


@pytest.mark.parametrize("length", [100, 100 * KiB])
def test_half_sent_write_payload_emits_nothing(length: int) -> None:
    p = ready()
    data = wire.request(Cmd.WRITE, 9, 0, length) + b"\x07" * length
    p.server.receive_data(data[:-1])
    assert p.server.next_event() is NEED_DATA and p.server.data_to_send() == []
    p.server.receive_data(data[-1:])
    event = p.server.next_event()
    assert isinstance(event, Request) and bytes(event.payload or b"") == b"\x07" * length


@pytest.mark.parametrize("size", [1000, 64 * KiB, 300 * KiB])
@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_write_payload_in_many_small_pieces(size: int, piece: int) -> None:
    if piece == 1 and size > 64 * KiB:
        piece = 997  # keep the byte-by-byte case fast
    p = ready(piece=piece)
    data = random.Random(size).randbytes(size)
    cookie = p.client.write(3, data)  # the last thing sent: ends on a piece boundary
    assert [e for e in p.pump() if isinstance(e, RequestDone)] == [
        RequestDone(cookie, Cmd.WRITE, 0)]
    assert p.disk.data[3:3 + size] == data


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("piece", [1, 13, 65536])
def test_everything_through_get_buffer(structured: bool, piece: int) -> None:
    p = ready(structured, piece=piece, zero_copy=True)
    blobs = {off: random.Random(off).randbytes(n)
             for off, n in [(0, 10), (4096, 70 * KiB), (1 << 20, 1 << 20)]}
    if piece == 1:
        blobs = {0: blobs[0], 4096: blobs[4096][:5000]}
    for off, blob in blobs.items():  # pipelined: payloads end mid-piece
        p.client.write(off, blob)
    reads = {p.client.read(off, len(blob)): blob for off, blob in blobs.items()}
    events = p.pump()
    assert all(e.error == 0 for e in events if isinstance(e, RequestDone))
    got = {e.cookie: bytes(e.data) for e in events if isinstance(e, ReadChunk)}
    assert got == reads


def test_client_zero_copy_large_read() -> None:
    p = ready(True)
    blob = random.Random(1).randbytes(3 << 20)
    p.disk.data[: len(blob)] = blob
    cookie = p.client.read(0, len(blob))
    p.server.receive_data(b"".join(p.client.data_to_send()))
    p.serve()
    reply = b"".join(bytes(b) for b in p.app.out)
    p.app.out = []
    feed_zero_copy(p.client, reply)  # asserts get_buffer never hands out an empty buffer
    events = drain(p.client)
    assert bytes(events[0].data) == blob and events[1] == RequestDone(cookie, Cmd.READ, 0)  # type: ignore[attr-defined]


@pytest.mark.parametrize("structured", [False, True])
def test_replies_byte_by_byte(structured: bool) -> None:
    p = ready(structured, piece=1)
    p.client.write(0, b"abcdef")
    cookie = p.client.read(1, 4)
    events = p.pump()
    (chunk,) = [e for e in events if isinstance(e, ReadChunk)]
    assert (chunk.cookie, chunk.offset, chunk.data) == (cookie, 1, b"bcde")


@pytest.mark.parametrize("magic", [0, 0x12560953, c.SIMPLE_REPLY_MAGIC, 0xFFFFFFFF])
def test_bad_request_magic_is_fatal(magic: int) -> None:
    p = ready()
    p.server.receive_data(wire.REQUEST.pack(magic, 0, 0, 1, 0, 512))
    with pytest.raises(RemoteProtocolError):
        p.server.next_event()
    assert p.server.state.value == "closed"


def test_bad_option_magic_is_fatal() -> None:
    p = Pair()
    p.pump()
    p.server.receive_data(wire.OPTION.pack(0x1234, c.Opt.LIST, 0))
    with pytest.raises(RemoteProtocolError):
        p.server.next_event()


@pytest.mark.parametrize("flags", [
    0,  # not fixed newstyle: this server insists on it
    1 | 1 << 2, 1 | 1 << 31, 3 | 1 << 5,  # unknown bits (an IntFlag mask once let them pass)
])
def test_bad_client_flags_are_fatal(flags: int) -> None:
    p = Pair()
    p.server.data_to_send()
    p.server.receive_data(wire.CLIENT_FLAGS.pack(flags))  # "unknown flag: MUST drop"
    with pytest.raises(RemoteProtocolError):
        p.server.next_event()
    assert p.server.state.value == "closed"


def test_server_copy_path_with_data_after_a_large_payload() -> None:
    """receive_data() of [rest of a >=64 KiB write payload + next request] in one call
    (once spun forever: get_buffer() returned an empty view of the full payload)."""
    p = ready()
    data = (wire.request(Cmd.WRITE, 1, 0, 100 * KiB) + b"\x01" * (100 * KiB)
            + wire.request(Cmd.READ, 2, 0, 4))
    p.server.receive_data(data[:1000])
    assert p.server.next_event() is NEED_DATA  # the payload now goes to its own buffer
    with deadline(2):
        p.server.receive_data(data[1000:])
        first, second = p.server.next_event(), p.server.next_event()
    assert isinstance(first, Request) and first.cookie == 1
    assert isinstance(second, Request) and second.cookie == 2
