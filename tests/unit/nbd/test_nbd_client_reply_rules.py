"""The client core against a misbehaving server in transmission (proto.md
"Simple reply message", "Structured reply types", "Request types").

Each vector names the requests made (their cookies are 1, 2, ... in order),
the server bytes, and either the RemoteProtocolError expected or the events.
"""

from __future__ import annotations

import pytest
from nbdcraft import (
    data_chunk,
    error_chunk,
    feed,
    hole_chunk,
    none_chunk,
    ready_client,
    status_chunk,
)

from blockyard.errors import LocalProtocolError, RemoteProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client import ClientConnection
from blockyard.nbd.client_events import (
    BlockStatusChunk,
    Closed,
    ErrorChunk,
    HoleChunk,
    ReadChunk,
    RequestDone,
)

Cmd, RT, F = c.Cmd, c.ReplyType, c.CmdFlag
META = {7: "base:allocation"}
READ8 = ("read", (0, 8))
SIMPLE_OK = wire.simple_reply


def make(structured: bool, requests: list[tuple[str, tuple[int, ...]]],
         **kw: object) -> ClientConnection:
    client = ready_client(structured, meta=META if structured else None, **kw)  # type: ignore[arg-type]
    for method, args in requests:
        if method == "bs1":
            client.block_status(*args, req_one=True)
        elif method == "df":
            client.read(*args, df=True)
        elif method == "write":
            client.write(args[0], bytes(args[1]))
        else:
            getattr(client, method)(*args)
    client.data_to_send()
    return client


BAD = [
    ("unknown cookie", False, [READ8], SIMPLE_OK(99), "not in flight"),
    ("bad magic", True, [READ8], b"\x12\x34\x56\x78" + bytes(12), "magic"),
    ("chunk without structured", False, [READ8], none_chunk(1), "not negotiated"),
    ("simple reply to structured READ", True, [READ8], SIMPLE_OK(1), "simple reply to READ"),
    ("simple ok to BLOCK_STATUS", True, [("block_status", (0, 8))], SIMPLE_OK(1),
     "BLOCK_STATUS"),
    ("simple after a chunk", True, [("flush", ())],
     error_chunk(1, c.EIO, flags=0) + SIMPLE_OK(1), "after structured"),
    ("NONE without DONE", True, [("flush", ())], wire.chunk(1, RT.NONE, b"", 0), "NONE"),
    ("NONE with payload", True, [("flush", ())], wire.chunk(1, RT.NONE, b"x"), "NONE"),
    ("data for a WRITE", True, [("write", (0, 8))], data_chunk(1, 0, b"x"), "WRITE"),
    ("data chunk too short", True, [READ8], wire.chunk(1, RT.OFFSET_DATA, bytes(8)),
     "bad length"),
    ("data beyond the request", True, [READ8], data_chunk(1, 4, bytes(8)), "outside"),
    ("data before the request", True, [("read", (8, 8))], data_chunk(1, 0, bytes(8)),
     "outside"),
    ("overlapping data", True, [READ8],
     data_chunk(1, 0, bytes(5), 0) + data_chunk(1, 4, bytes(4)), "overlaps"),
    ("data overlapping a hole", True, [READ8],
     hole_chunk(1, 2, 4, 0) + data_chunk(1, 0, bytes(3)), "overlaps"),
    ("DF broken", True, [("df", (0, 8))],
     data_chunk(1, 0, bytes(4), 0) + data_chunk(1, 4, bytes(4)), "DF"),
    ("hole of size 0", True, [READ8], hole_chunk(1, 0, 0), "size 0"),
    ("hole chunk of 11 bytes", True, [READ8], wire.chunk(1, RT.OFFSET_HOLE, bytes(11)),
     "length 11"),
    ("read not covered", True, [READ8], data_chunk(1, 0, bytes(4), 0) + none_chunk(1),
     "covers 4 of 8"),
    ("read done with nothing", True, [READ8], none_chunk(1), "covers 0 of 8"),
    ("unknown chunk type", True, [READ8], wire.chunk(1, 3, b""), "unknown structured"),
    ("error 0", True, [READ8], error_chunk(1, 0), "error 0"),
    ("error message too long", True, [READ8],
     wire.chunk(1, RT.ERROR, wire.ERROR_CHUNK.pack(c.EIO, 50) + b"short"), "does not fit"),
    ("error chunk with extra bytes", True, [READ8],
     wire.chunk(1, RT.ERROR, wire.ERROR_CHUNK.pack(c.EIO, 0) + b"xx"), "disagrees"),
    ("error offset outside", True, [READ8], error_chunk(1, c.EIO, offset=8), "outside"),
    ("error offset on FLUSH", True, [("flush", ())], error_chunk(1, c.EIO, offset=0),
     "ERROR_OFFSET"),
    ("status unknown context", True, [("block_status", (0, 8))],
     status_chunk(1, 3, [(8, 0)]), "context 3"),
    ("status context twice", True, [("block_status", (0, 8))],
     status_chunk(1, 7, [(4, 0)], 0) + status_chunk(1, 7, [(4, 0)]), "context 7"),
    ("REQ_ONE two extents", True, [("bs1", (0, 8))],
     status_chunk(1, 7, [(4, 0), (4, 3)]), "REQ_ONE"),
    ("REQ_ONE beyond the request", True, [("bs1", (0, 8))],
     status_chunk(1, 7, [(16, 0)]), "REQ_ONE"),
    ("extent of length 0", True, [("block_status", (0, 8))],
     status_chunk(1, 7, [(0, 0)]), "length 0"),
    ("status payload not 4+8n", True, [("block_status", (0, 8))],
     wire.chunk(1, RT.BLOCK_STATUS, bytes(10)), "multiple of 8"),
    ("extents past the request before the last", True, [("block_status", (0, 8))],
     status_chunk(1, 7, [(8, 0), (8, 3)]), "before the last"),
    ("status done without status", True, [("block_status", (0, 8))], none_chunk(1),
     "lacks a negotiated context"),
    ("status chunk for READ", True, [READ8], status_chunk(1, 7, [(8, 0)]), "READ"),
    ("hole for a BLOCK_STATUS", True, [("block_status", (0, 8))], hole_chunk(1, 0, 8),
     "BLOCK_STATUS"),
]


@pytest.mark.parametrize(("structured", "requests", "server", "match"),
                         [v[1:] for v in BAD], ids=[v[0] for v in BAD])
def test_misbehaving_server(structured: bool, requests: list[tuple[str, tuple[int, ...]]],
                            server: bytes, match: str) -> None:
    client = make(structured, requests)
    with pytest.raises(RemoteProtocolError, match=match):
        feed(client, server)
    with pytest.raises(LocalProtocolError):  # the connection is dead from now on
        client.next_event()


def test_extents_must_respect_the_minimum_block() -> None:
    client = ready_client(True, meta=META, min_block=512)
    client.block_status(0, 4096)
    with pytest.raises(RemoteProtocolError, match="minimum block"):
        feed(client, status_chunk(1, 7, [(100, 0)]))


GOOD = [
    ("chunks out of order", True, [READ8],
     data_chunk(1, 4, b"efgh", 0) + hole_chunk(1, 0, 4, 0) + none_chunk(1),
     [ReadChunk(1, 4, b"efgh"), HoleChunk(1, 0, 4), RequestDone(1, Cmd.READ, 0)]),
    ("final data chunk carries DONE", True, [READ8], data_chunk(1, 0, b"abcdefgh"),
     [ReadChunk(1, 0, b"abcdefgh"), RequestDone(1, Cmd.READ, 0)]),
    ("unknown reply flags ignored", True, [("flush", ())], wire.chunk(1, RT.NONE, b"", 0x8001),
     [RequestDone(1, Cmd.FLUSH, 0)]),
    ("unknown error type is an error", True, [READ8],
     wire.chunk(1, 0x8009, wire.ERROR_CHUNK.pack(c.EIO, 1) + b"m" + b"extra"),
     [ErrorChunk(1, c.EIO, "m"), RequestDone(1, Cmd.READ, c.EIO, "m")]),
    ("unknown error value becomes EINVAL", False, [READ8], SIMPLE_OK(1, 99),
     [RequestDone(1, Cmd.READ, c.EINVAL)]),
    ("error offset then more data", True, [READ8],
     data_chunk(1, 0, b"abcd", 0) + error_chunk(1, c.EIO, b"bad", 2, flags=0)
     + data_chunk(1, 4, b"efgh"),
     [ReadChunk(1, 0, b"abcd"), ErrorChunk(1, c.EIO, "bad", 2), ReadChunk(1, 4, b"efgh"),
      RequestDone(1, Cmd.READ, c.EIO, "bad")]),
    ("error without content is fine", True, [READ8], error_chunk(1, c.EINVAL, b"no"),
     [ErrorChunk(1, c.EINVAL, "no"), RequestDone(1, Cmd.READ, c.EINVAL, "no")]),
    ("simple error on structured write", True, [("write", (0, 8))], SIMPLE_OK(1, c.ENOSPC),
     [RequestDone(1, Cmd.WRITE, c.ENOSPC)]),
    ("simple read error carries no data", False, [READ8, ("flush", ())],
     SIMPLE_OK(1, c.EIO) + SIMPLE_OK(2),
     [RequestDone(1, Cmd.READ, c.EIO), RequestDone(2, Cmd.FLUSH, 0)]),
    ("last extent may pass the request", True, [("block_status", (0, 8))],
     status_chunk(1, 7, [(4, 3), (1 << 20, 0)]),
     [BlockStatusChunk(1, 7, [(4, 3), (1 << 20, 0)]), RequestDone(1, Cmd.BLOCK_STATUS, 0)]),
    ("fewer extents than asked", True, [("block_status", (0, 8))],
     status_chunk(1, 7, [(2, 3)]),
     [BlockStatusChunk(1, 7, [(2, 3)]), RequestDone(1, Cmd.BLOCK_STATUS, 0)]),
    ("interleaved replies", True, [READ8, ("read", (8, 4))],
     data_chunk(1, 0, b"a" * 4, 0) + data_chunk(2, 8, b"bbbb") + data_chunk(1, 4, b"c" * 4),
     [ReadChunk(1, 0, b"aaaa"), ReadChunk(2, 8, b"bbbb"), RequestDone(2, Cmd.READ, 0),
      ReadChunk(1, 4, b"cccc"), RequestDone(1, Cmd.READ, 0)]),
]


@pytest.mark.parametrize(("structured", "requests", "server", "events"),
                         [v[1:] for v in GOOD], ids=[v[0] for v in GOOD])
def test_well_behaved_server(structured: bool, requests: list[tuple[str, tuple[int, ...]]],
                             server: bytes, events: list[object]) -> None:
    client = make(structured, requests)
    assert feed(client, server) == events
    assert client.in_flight == 0


@pytest.mark.parametrize(("data", "match"), [
    (b"", None), (b"\x67\x44", "middle"), (data_chunk(1, 0, b"ab", 0)[:25], "middle")])
def test_end_of_input(data: bytes, match: str | None) -> None:
    client = make(True, [READ8])
    if data:
        client.receive_data(data)
    client.receive_eof()
    with pytest.raises(RemoteProtocolError, match=match or "1 requests in flight"):
        client.next_event()


def test_end_of_input_when_idle_is_clean() -> None:
    client = make(True, [])
    client.receive_eof()
    assert client.next_event() == Closed("closed by the server")
