"""Hypothesis round trips of every codec, across the two cores where possible:
requests (client encodes, server core decodes), replies (server encoders,
client core decodes), option requests and replies, info payloads."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbdcraft import feed, greeted, ready_client
from nbdpair import Pair, drain, server_in_transmission

from blockyard.nbd import client_codec as codec
from blockyard.nbd import constants as c
from blockyard.nbd import replies, wire
from blockyard.nbd.client_events import (
    BlockStatusChunk,
    ErrorChunk,
    ExportInfo,
    HoleChunk,
    InfoBlockSize,
    InfoDescription,
    InfoName,
    OptionAck,
    ReadChunk,
    RequestDone,
    ServerEntry,
)
from blockyard.nbd.events import NEED_DATA, ExportQuery, ExportSpec, Request
from blockyard.nbd.server import ServerConnection
from blockyard.nbd.validate import COMMANDS

Cmd, F, TF = c.Cmd, c.CmdFlag, c.TransmissionFlag
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
SIZE = 1 << 20

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=40).filter(lambda s: len(s.encode()) <= c.MAX_STRING)
u64 = st.integers(0, (1 << 64) - 1)
wire_errors = st.sampled_from(sorted(c.WIRE_ERRNOS))


# ---- requests: client core -> server core ---------------------------------------------------
@st.composite
def requests(draw: st.DrawFn) -> tuple[int, int, int, int, bytes | None]:
    cmd = draw(st.sampled_from([int(k) for k in COMMANDS if k != Cmd.BLOCK_STATUS]))
    allowed = int(COMMANDS[cmd][0]) & ~int(F.DF)
    flags = draw(st.integers(0, 31)) & allowed
    offset = draw(st.integers(0, SIZE))
    length = 0 if cmd == Cmd.FLUSH else draw(st.integers(0, min(SIZE - offset, 70_000)))
    if cmd == Cmd.FLUSH:
        offset = 0
    payload = draw(st.binary(min_size=length, max_size=length)) if cmd == Cmd.WRITE else None
    return cmd, flags, offset, length, payload


@FAST
@given(st.lists(st.tuples(requests(), u64), min_size=1, max_size=8), st.booleans())
def test_requests_round_trip(reqs: list[tuple[tuple[int, int, int, int, bytes | None], int]],
                             structured: bool) -> None:
    client = ready_client(structured)
    server = server_in_transmission(structured)
    sent = {}
    for (cmd, flags, offset, length, payload), cookie in reqs:
        if cookie in sent:
            continue
        client.request(cmd, offset, length, flags, payload, cookie=cookie)
        sent[cookie] = (cmd, flags, offset, length, payload)
    server.receive_data(b"".join(bytes(b) for b in client.data_to_send()))
    got = {}
    while (event := server.next_event()) is not NEED_DATA:
        assert isinstance(event, Request)
        payload = None if event.payload is None else bytes(event.payload)
        got[event.cookie] = (event.cmd, event.flags, event.offset, event.length, payload)
    assert server.data_to_send() == []  # nothing was refused
    assert got == sent


# ---- replies: server encoders -> client core ------------------------------------------------
@FAST
@given(st.binary(max_size=3000), st.integers(0, SIZE - 3000), st.booleans())
def test_read_replies_round_trip(data: bytes, offset: int, structured: bool) -> None:
    client = ready_client(structured)
    cookie = client.read(offset, len(data))
    out = (replies.read_structured(cookie, offset, data) if structured
           else replies.read_simple(cookie, data))
    events = feed(client, b"".join(bytes(b) for b in out))
    assert events[-1] == RequestDone(cookie, Cmd.READ, 0)
    chunks = [e for e in events if isinstance(e, ReadChunk)]
    assert b"".join(bytes(e.data) for e in chunks) == data
    assert all(e.offset == offset for e in chunks)


@FAST
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 600)), min_size=1, max_size=12),
       st.integers(0, 4096), st.randoms(use_true_random=False))
def test_sparse_read_round_trip(pieces: list[tuple[bool, int]], start: int,
                                rng: object) -> None:
    spec, pos = [], start
    for is_hole, n in pieces:
        spec.append((pos, n if is_hole else bytes([n % 251 + 1]) * n))
        pos += n
    client = ready_client(True)
    cookie = client.read(start, pos - start)
    chunks = replies.read_sparse(cookie, spec)
    events = feed(client, b"".join(bytes(b) for b in chunks))
    want = [HoleChunk(cookie, o, i) if isinstance(i, int) else ReadChunk(cookie, o, i)
            for o, i in spec]
    assert events == want + [RequestDone(cookie, Cmd.READ, 0)]


@FAST
@given(wire_errors, st.text(max_size=100), st.booleans(),
       st.sampled_from([Cmd.READ, Cmd.WRITE, Cmd.FLUSH, Cmd.TRIM]))
def test_error_replies_round_trip(err: int, message: str, structured: bool, cmd: int) -> None:
    client = ready_client(structured)
    cookie = client.request(cmd, 0, 0 if cmd == Cmd.FLUSH else 8, 0,
                            bytes(8) if cmd == Cmd.WRITE else None)
    events = feed(client, replies.error(cookie, err, structured, message))
    msg = message.encode()[: c.MAX_STRING].decode("utf-8", "replace") if structured else ""
    tail = [RequestDone(cookie, cmd, err, msg)]
    assert events == ([ErrorChunk(cookie, err, msg)] + tail if structured else tail)


extents = st.lists(st.tuples(st.integers(1, 1 << 16), st.integers(0, 3)), min_size=1,
                   max_size=50)


@FAST
@given(extents, st.integers(1, (1 << 32) - 1))
def test_block_status_round_trip(ext: list[tuple[int, int]], cid: int) -> None:
    client = ready_client(True, meta={cid: "base:allocation"}, size=1 << 40)
    length = sum(n for n, _ in ext)
    cookie = client.block_status(0, length)
    events = feed(client, replies.block_status(cookie, cid, ext))
    assert events == [BlockStatusChunk(cookie, cid, ext), RequestDone(cookie, 7, 0)]
    assert codec.parse_block_status(replies.block_status(0, cid, ext)[20:]) == (cid, ext)


@FAST
@given(u64, st.integers(1, (1 << 32) - 1), wire_errors, st.binary(max_size=50))
def test_chunk_payload_codecs(offset: int, n: int, err: int, msg: bytes) -> None:
    body = wire.error_chunk(1, err, msg.decode("latin-1"), offset)[20:]
    got = codec.parse_error_payload(body, 8)
    assert got[0] == err and got[2] == offset.to_bytes(8, "big")
    assert wire.OFFSET_HOLE.unpack(wire.OFFSET_HOLE.pack(offset, n)) == (offset, n)


# ---- options and info payloads --------------------------------------------------------------
@FAST
@given(names, st.lists(st.sampled_from(list(c.Info)), unique=True))
def test_option_names_and_info_requests_reach_the_server(name: str, infos: list[int]) -> None:
    client = greeted()
    client.info(name, infos)
    server = ServerConnection()
    server.data_to_send()
    server.receive_data(wire.CLIENT_FLAGS.pack(3) + b"".join(client.data_to_send()))
    assert server.next_event() == ExportQuery(c.Opt.INFO, name, go=False)


@FAST
@given(names, st.lists(names.map(lambda s: "x-" + s.replace(":", "") + ":" + s), max_size=5))
def test_meta_requests_round_trip(name: str, queries: list[str]) -> None:
    data = wire.meta_request(name, queries)
    (got_name,), pos = wire.parse_lp_strings(data, 0, 1)
    (count,) = wire.U32.unpack_from(data, pos)
    got, end = wire.parse_lp_strings(data, pos + 4, count)
    assert (got_name, got, end) == (name, queries, len(data))


class SpecOnly:
    """Enough of ``nbdpair.Disk`` for the handshake."""

    def __init__(self, spec: ExportSpec) -> None:
        self.spec = spec


block_sizes = st.tuples(st.integers(0, 16), st.integers(9, 20), st.integers(0, 8)).map(
    lambda t: (1 << t[0], max(1 << t[1], 1 << t[0]),
               max(1 << t[1], (1 << t[0]) * (4096 + t[2]))))  # valid per proto.md


@FAST
@given(names.filter(bool), st.integers(1, 1 << 50), st.integers(0, 0xFFFF), names,
       block_sizes)
def test_info_replies_round_trip(name: str, size: int, flags: int, desc: str,
                                 bs: tuple[int, int, int]) -> None:
    spec = ExportSpec(name, size, flags & ~TF.SEND_DF, desc, *bs)
    p = Pair([])
    p.app.disks = {name: SpecOnly(spec)}  # type: ignore[dict-item]  # no 2**50-byte bytearray
    p.pump()
    p.client.info(name, [c.Info.NAME, c.Info.DESCRIPTION, c.Info.BLOCK_SIZE])
    events = p.pump()
    want = [ExportInfo(c.Opt.INFO, size, (flags & ~TF.SEND_DF) | TF.HAS_FLAGS),
            InfoName(c.Opt.INFO, name)]
    if desc:
        want.append(InfoDescription(c.Opt.INFO, desc))
    want += [InfoBlockSize(c.Opt.INFO, *bs), OptionAck(c.Opt.INFO)]
    assert events == want


@FAST
@given(st.lists(st.tuples(names, names), max_size=6))
def test_list_round_trip(exports: list[tuple[str, str]]) -> None:
    client = greeted()
    server = ServerConnection()
    server.data_to_send()
    client.list_exports()
    server.receive_data(wire.CLIENT_FLAGS.pack(3) + b"".join(client.data_to_send()))
    server.next_event()
    server.send_list(exports)
    events = feed(client, *server.data_to_send())
    assert events == [ServerEntry(n, d) for n, d in exports] + [OptionAck(c.Opt.LIST)]


@FAST
@given(u64, st.integers(0, 0xFFFF))
def test_export_name_reply_round_trip(size: int, flags: int) -> None:
    for no_zeroes in (True, False):
        client = greeted(no_zeroes=no_zeroes)
        client.export_name("x")
        reply = wire.EXPORT_NAME_REPLY.pack(size, flags | 1)
        client.receive_data(reply if no_zeroes else reply + wire.ZERO_PAD)
        (ready,) = drain(client)
        assert (ready.export.size, ready.export.flags) == (size, flags | 1)  # type: ignore[attr-defined]


def test_struct_layouts_match_the_spec() -> None:
    """Sizes from proto.md, so a wrong struct format cannot round-trip silently."""
    sizes = {wire.GREETING: 18, wire.OPTION: 16, wire.OPTION_REPLY: 20, wire.REQUEST: 28,
             wire.SIMPLE_REPLY: 16, wire.CHUNK: 20, wire.INFO_EXPORT: 12,
             wire.INFO_BLOCK_SIZE: 14, wire.EXPORT_NAME_REPLY: 10}
    assert {s: s.size for s in sizes} == sizes
    assert struct.calcsize(">IHHQQI") == 28
