"""Large NBD reads of dynamic images through ``Layer.sync_map`` (header, FileRange
runs sent with sendfile from an I/O thread, a tail buffer that releases the map).

The bytes a client receives must be the image's content read through the
layer, for every format, for requests inside allocated data (mapped) and for
requests that straddle unallocated or zero blocks (not mapped: the async
path).  A VDI compaction running meanwhile moves blocks and truncates the
file; replies already queued keep their blocks pinned until they have left.
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest

from blockyard.block.formats import create_image
from blockyard.block.layer import FileMap
from blockyard.transport.nbd_server import Export

MiB = 1 << 20
SIZE = 16 * MiB
DATA = [(0, 8 * MiB), (14 * MiB, 2 * MiB)]
ZEROED = (12 * MiB, 2 * MiB)  # [8, 12) MiB is never written
REQUESTS = [(0, MiB), (4096, 3 * MiB), (MiB - 512, 2 * MiB), (7 * MiB, 2 * MiB),
            (7 * MiB + 1, 300_000), (11 * MiB, 2 * MiB), (12 * MiB, MiB), (13 * MiB + 17, MiB),
            (14 * MiB, 2 * MiB), (15 * MiB + 1, 999_999), (SIZE - 256 * 1024, 256 * 1024),
            (0, SIZE)]


class CountingMapper:
    """Stands in for the image's ``sync_map`` and counts its answers."""

    def __init__(self, img: Any) -> None:
        self.inner = img.sync_map
        self.mapped = 0
        self.refused = 0
        img.sync_map = self

    def __call__(self, offset: int, length: int) -> FileMap | None:
        fmap = self.inner(offset, length)
        if fmap is None:
            self.refused += 1
        else:
            self.mapped += 1
        return fmap


async def build(path: Path, fmt: str, variant: str = "dynamic") -> Any:
    img = create_image(path, SIZE, fmt, variant)
    rng = random.Random(11)
    for off, n in [*DATA, ZEROED]:
        await img.pwrite(off, rng.randbytes(n))
    await img.zero(*ZEROED)
    await img.flush()
    return img


async def read_all(client: Any, requests: list[tuple[int, int]]) -> list[bytes]:
    replies = await asyncio.gather(*(client.submit("read", off, n) for off, n in requests))
    assert all(r.error == 0 for r in replies), [r.message for r in replies]
    return [bytes(r.data) for r in replies]


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "simple"])
@pytest.mark.parametrize("fmt,variant", [("vdi", "dynamic"), ("vhd", "dynamic"),
                                         ("vmdk", "dynamic"), ("vmdk", "split2g"),
                                         ("vdi", "fixed")])
async def test_reads_equal_the_layer_mapped_or_not(nbd_server, nbd_connect, assert_served,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path, fmt: str, variant: str,
                                                   structured: bool) -> None:
    img = await build(tmp_path / f"disk.{fmt}", fmt, variant)
    expected = [bytes(await img.pread(off, n)) for off, n in REQUESTS]
    counter = CountingMapper(img)
    srv = await nbd_server(Export("disk", img))
    client = await nbd_connect(srv.host, srv.port)
    await client.go("disk", structured)
    for _ in range(2):  # the second time VHD has its sector bitmaps in memory
        assert await read_all(client, REQUESTS) == expected
    assert counter.mapped >= 6 and (counter.refused >= 4 or variant == "fixed")
    await client.disconnect()
    await assert_served(srv.host, srv.port)


async def vdi_to_compact(tmp_path: Path, blocks: int, zero_blocks: list[int]) -> tuple[Any, bytes]:
    """``blocks`` 1 MiB blocks of random data in slot order; ``zero_blocks`` rewritten with
    zeros in place, so a compaction frees them and moves the last blocks into their slots."""
    img = create_image(tmp_path / "c.vdi", blocks * MiB, "vdi")
    blob = bytearray(os.urandom(blocks * MiB))
    await img.pwrite(0, blob)
    for b in zero_blocks:
        blob[b * MiB:(b + 1) * MiB] = bytes(MiB)
        await img.pwrite(b * MiB, bytes(MiB))
    await img.flush()
    return img, bytes(blob)


async def test_vdi_compaction_during_mapped_reads(nbd_server, nbd_connect, assert_served,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    img, blob = await vdi_to_compact(tmp_path, 32, [3, 10, 17])
    counter = CountingMapper(img)
    srv = await nbd_server(Export("disk", img))
    client = await nbd_connect(srv.host, srv.port)
    await client.go("disk")
    rng = random.Random(5)
    for round_ in range(3):
        requests = []
        for _ in range(64):
            n = rng.randrange(256 << 10, 3 * MiB)
            requests.append((rng.randrange(0, len(blob) - n), n))
        futures = [client.submit("read", off, n) for off, n in requests[:16]]
        await futures[0]  # the first wave is mapped before the compaction starts
        compaction = asyncio.create_task(img.compact())
        for wave in range(16, 64, 16):  # the others while it frees, moves and truncates
            await asyncio.sleep(0)
            futures += [client.submit("read", off, n) for off, n in requests[wave:wave + 16]]
        replies = await asyncio.gather(*futures)
        await asyncio.wait_for(compaction, 30)
        assert [bytes(r.data) for r in replies] == [blob[off:off + n] for off, n in requests]
        if round_ < 2:  # more blocks of zeros for the next compaction
            for b in rng.sample([b for b in range(32) if any(blob[b * MiB:b * MiB + 16])], 3):
                await img.pwrite(b * MiB, bytes(MiB))
                blob = blob[:b * MiB] + bytes(MiB) + blob[(b + 1) * MiB:]
            await img.flush()
    assert list(img.bmap) != list(range(32))  # blocks did move
    assert await read_all(client, [(0, len(blob))]) == [blob]
    assert counter.mapped > 0
    await client.disconnect()
    await assert_served(srv.host, srv.port)


async def pinned(img: Any, at_least: int = 1) -> None:
    """Wait until the server holds ``at_least`` mapped replies it could not send yet."""
    async def poll() -> None:
        while img._gate._pins < at_least:
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), 30)


async def test_queued_replies_keep_their_blocks_until_sent(nbd_server, nbd_connect,  # type: ignore[no-untyped-def]
                                                           assert_served, tmp_path: Path) -> None:
    """A client that stops reading: its replies wait in the server with their blocks
    pinned; the compaction waits for them, and they carry the data of before."""
    img, blob = await vdi_to_compact(tmp_path, 24, [1, 2, 5])
    srv = await nbd_server(Export("disk", img))
    client = await nbd_connect(srv.host, srv.port)
    await client.go("disk")
    client.transport.pause_reading()
    requests = [(b * MiB, MiB) for b in range(24)] * 2
    futures = [client.submit("read", off, n) for off, n in requests]
    await pinned(img)
    compaction = asyncio.create_task(img.compact())
    for _ in range(20):
        await asyncio.sleep(0.01)
    assert not compaction.done() and img.sync_map(20 * MiB, MiB) is None
    client.transport.resume_reading()
    replies = await asyncio.gather(*futures)
    assert [bytes(r.data) for r in replies] == [blob[off:off + n] for off, n in requests]
    await asyncio.wait_for(compaction, 30)
    assert img.bmap[23] != 23 and await read_all(client, [(0, len(blob))]) == [blob]
    await client.disconnect()
    await assert_served(srv.host, srv.port)


async def test_replies_dropped_with_the_connection_release_their_pins(  # type: ignore[no-untyped-def]
        nbd_server, nbd_connect, assert_served, tmp_path: Path) -> None:
    img, blob = await vdi_to_compact(tmp_path, 24, [4])
    srv = await nbd_server(Export("disk", img))
    client = await nbd_connect(srv.host, srv.port)
    await client.go("disk")
    client.transport.pause_reading()
    futures = [client.submit("read", b * MiB, MiB) for b in range(24)]
    await pinned(img)
    client.abort()
    await asyncio.gather(*futures, return_exceptions=True)
    await asyncio.wait_for(img.compact(), 30)  # finishes once the dropped replies are freed
    assert img._gate._pins == 0
    check = await nbd_connect(srv.host, srv.port)
    await check.go("disk")
    assert await read_all(check, [(0, len(blob))]) == [blob]
    await check.disconnect()
    await assert_served(srv.host, srv.port)
