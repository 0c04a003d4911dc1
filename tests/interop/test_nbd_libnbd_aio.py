"""libnbd against blockyard: 64 pipelined requests, and block status after writes and trims."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nbd_helpers import MiB, read_at, sparse_file, write_at

pytestmark = pytest.mark.interop

SIZE = 32 * MiB
DEPTH = 64
BLOCK = 64 << 10


def _connect(nbd, uri: str):  # type: ignore[no-untyped-def]
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h


def _wait_all(h, cookies: list[int]) -> None:  # type: ignore[no-untyped-def]
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for cookie in cookies:
        assert h.aio_command_completed(cookie) is True


def test_64_pipelined_writes_then_reads(nbd, nbd_server, tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "disk.img", SIZE)
    h = _connect(nbd, nbd_server(path).uri("disk"))
    blocks = [os.urandom(BLOCK) for _ in range(DEPTH)]
    offsets = [(i * 7919 % DEPTH) * 3 * BLOCK + (i % 3) * 512 for i in range(DEPTH)]
    pairs = list(zip(blocks, offsets, strict=True))
    cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(b), off) for b, off in pairs]
    assert h.aio_in_flight() > 1, "the writes should be in flight together"
    _wait_all(h, cookies)
    bufs = [nbd.Buffer(BLOCK) for _ in range(DEPTH)]
    cookies = [h.aio_pread(buf, off) for buf, off in zip(bufs, offsets, strict=True)]
    _wait_all(h, cookies)
    got = [bytes(buf.to_bytearray()) for buf in bufs]
    assert [i for i in range(DEPTH) if got[i] != blocks[i]] == []
    h.shutdown()
    assert [read_at(path, off, BLOCK) == b for b, off in pairs] == [True] * DEPTH


def test_pipelined_mixed_reads_and_writes(nbd, nbd_server, tmp_path: Path) -> None:
    """Reads of old data interleaved with writes to other blocks, all in flight at once."""
    path = sparse_file(tmp_path / "disk.img", SIZE)
    old = os.urandom(DEPTH * BLOCK)
    write_at(path, 0, old)
    h = _connect(nbd, nbd_server(path).uri("disk"))
    new = [os.urandom(BLOCK) for _ in range(DEPTH)]
    reads, cookies = [], []
    for i in range(DEPTH):
        buf = nbd.Buffer(BLOCK)
        reads.append(buf)
        cookies.append(h.aio_pread(buf, i * BLOCK))
        cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(new[i]), (DEPTH + i) * BLOCK))
    _wait_all(h, cookies)
    got = b"".join(bytes(buf.to_bytearray()) for buf in reads)
    assert got == old
    assert h.pread(DEPTH * BLOCK, DEPTH * BLOCK) == b"".join(new)
    h.shutdown()


def _status(h, length: int, offset: int = 0, flags: int = 0) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """Extents (length, flags) covering [offset, offset+length), asking as often as needed."""
    out: list[tuple[int, int]] = []
    end = offset + length
    got: list[int] = []

    def cb(ctx: str, off: int, entries: list[int], err: int) -> int:
        if ctx == "base:allocation":
            got.extend(entries)
        return 0
    while offset < end:
        got.clear()
        h.block_status(end - offset, offset, cb, flags)
        assert got, "block status returned no base:allocation extents"
        for i in range(0, len(got), 2):
            out.append((got[i], got[i + 1]))
            offset += got[i]
        if flags:
            break
    return out


def _merge(extents: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for length, flags in extents:
        if out and out[-1][1] == flags:
            out[-1] = (out[-1][0] + length, flags)
        else:
            out.append((length, flags))
    return out


def test_block_status_after_writes_and_trims(nbd, nbd_server, tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "disk.img", SIZE)
    write_at(path, 16 * MiB, os.urandom(8 * MiB))
    h = _connect(nbd, nbd_server(path).uri("disk"))
    assert h.can_meta_context("base:allocation")
    hole = nbd.STATE_HOLE | nbd.STATE_ZERO
    assert _merge(_status(h, SIZE)) == [(16 * MiB, hole), (8 * MiB, 0), (8 * MiB, hole)]
    h.pwrite(os.urandom(MiB), 2 * MiB)
    h.trim(2 * MiB, 18 * MiB)
    h.zero(MiB, 22 * MiB)  # may punch: becomes a hole too
    assert _merge(_status(h, SIZE)) == [
        (2 * MiB, hole), (MiB, 0), (13 * MiB, hole), (2 * MiB, 0), (2 * MiB, hole),
        (2 * MiB, 0), (MiB, hole), (MiB, 0), (8 * MiB, hole)]
    # status from an offset inside an extent, and REQ_ONE gives a single extent
    assert _merge(_status(h, 2 * MiB, 2 * MiB + 4096))[0] == (MiB - 4096, 0)
    one = _status(h, SIZE, 0, nbd.CMD_FLAG_REQ_ONE)
    assert one == [(2 * MiB, hole)]
    h.shutdown()


def test_two_connections_see_each_others_writes(nbd, nbd_server, tmp_path: Path) -> None:
    """multi-conn is advertised: after a flush on either connection, both read the same."""
    path = sparse_file(tmp_path / "disk.img", SIZE)
    uri = nbd_server(path).uri("disk")
    a, b = _connect(nbd, uri), _connect(nbd, uri)
    assert a.can_multi_conn() and b.can_multi_conn()
    blocks = [os.urandom(BLOCK) for _ in range(DEPTH)]
    cookies: dict[int, list[int]] = {0: [], 1: []}
    for i, data in enumerate(blocks):  # interleaved: even blocks via a, odd via b
        h = (a, b)[i % 2]
        cookies[i % 2].append(h.aio_pwrite(nbd.Buffer.from_bytearray(data), i * BLOCK))
    _wait_all(a, cookies[0])
    _wait_all(b, cookies[1])
    a.flush()
    want = b"".join(blocks)
    assert b.pread(DEPTH * BLOCK, 0) == want
    assert a.pread(DEPTH * BLOCK, 0) == want
    a.shutdown()
    b.shutdown()
