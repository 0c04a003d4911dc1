"""Snapshots of a served disk while tasks write and read through the session's layer:
no request fails, no read sees stale or mixed data, the snapshot holds exactly what had
completed before it, and a merge under writers loses nothing (dirty ranges re-copied)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from blockyard.block.chain_swap import SwapLayer
from blockyard.block.formats import open_image
from blockyard.control.live import LiveServer
from blockyard.media import attach_ops, ops
from blockyard.media.chain_open import open_chain
from blockyard.media.context import Context
from blockyard.media.registry import Registry
from blockyard.media.snapshot_delete import delete_snapshot
from blockyard.media.snapshots import snapshot_restore, snapshot_take
from blockyard.transport.nbd_server import ExportTable, NbdServer

MiB = 1 << 20
SIZE = 8 * MiB
WRITERS = 4


def pattern(writer: int, seq: int) -> bytes:
    return (writer.to_bytes(4, "little") + seq.to_bytes(4, "little")) * 512


class Served:
    def __init__(self, tmp: Path) -> None:
        self.reg = Registry(tmp / "state")
        self.nbd = NbdServer(ExportTable())
        self.ctx = Context(self.reg, tmp / "state", LiveServer(self.reg, self.nbd, grace=1))
        self.tmp = tmp

    async def start(self, fmt: str) -> SwapLayer:
        await ops.media_add(self.ctx, str(self.tmp / f"disk.{fmt}"), create_size=SIZE,
                            format=fmt)
        await attach_ops.controller_add(self.ctx, "c", "sata")
        await attach_ops.attach(self.ctx, "c", f"disk.{fmt}")
        layer = self.ctx.live.open_layer(self.reg.media()[0].uuid)  # type: ignore[union-attr]
        assert isinstance(layer, SwapLayer)
        return layer

    async def stop(self) -> None:
        await attach_ops.detach(self.ctx, "c", 0)
        await self.nbd.stop(grace=1)
        self.reg.close()


class Writers:
    """Each writer rewrites its own 4 KiB at its own MiB and reads it back at once."""

    def __init__(self, swap: SwapLayer) -> None:
        self.swap = swap
        self.started = [0] * WRITERS
        self.done = [0] * WRITERS
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(self.run(i)) for i in range(WRITERS)]

    async def run(self, i: int) -> None:
        off = i * 2 * MiB + 12345 // 512 * 512
        while not self.stop.is_set():
            seq = self.started[i] + 1
            self.started[i] = seq
            await self.swap.pwrite(off, pattern(i, seq))
            self.done[i] = seq
            assert await self.swap.pread(off, 4096) == pattern(i, seq)
            await asyncio.sleep(0)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)  # re-raises any failed request or stale read


async def _seq_at(layer: object, i: int) -> int:
    data = await layer.pread(i * 2 * MiB + 12345 // 512 * 512, 4096)  # type: ignore[attr-defined]
    assert data == data[:8] * 512
    return int.from_bytes(data[4:8], "little")


@pytest.mark.parametrize("fmt", ["vdi", "vmdk"])
async def test_take_and_merge_under_writers(tmp_path: Path, fmt: str) -> None:
    s = Served(tmp_path)
    swap = await s.start(fmt)
    w = Writers(swap)
    try:
        await asyncio.sleep(0.05)
        before = list(w.done)
        taken = await snapshot_take(s.ctx, f"disk.{fmt}", name="s1")
        after = list(w.started)
        await asyncio.sleep(0.05)
        frozen = open_chain(s.ctx.lookup(s.reg.resolve(f"disk.{fmt}").uuid), s.ctx.lookup,
                            read_only=True)
        for i in range(WRITERS):  # completed before: in; started after it returned: out
            assert before[i] <= await _seq_at(frozen, i) <= after[i]
        await frozen.close()
        await delete_snapshot(s.ctx, f"disk.{fmt}", "s1")  # merges the live top into disk
        at_return = list(w.done)
        for i in range(WRITERS):  # writes that landed during the copy were copied again
            assert await _seq_at(swap, i) >= at_return[i]
        await asyncio.sleep(0.05)
    finally:
        await w.finish()
    for i in range(WRITERS):
        assert await _seq_at(swap, i) == w.done[i]
    assert swap.swaps >= 3 and taken["snapshot"]
    await s.stop()
    reg = Registry(tmp_path / "state")
    assert [m.location for m in reg.media()] == [str(tmp_path / f"disk.{fmt}")]
    disk = open_image(tmp_path / f"disk.{fmt}", read_only=True)  # the merge is in the file
    for i in range(WRITERS):
        assert await _seq_at(disk, i) == w.done[i]
    await disk.close()
    reg.close()


async def test_restore_is_atomic_for_readers(tmp_path: Path) -> None:
    s = Served(tmp_path)
    swap = await s.start("vdi")
    await swap.pwrite(0, b"A" * (3 * MiB))
    await snapshot_take(s.ctx, "disk.vdi", name="a")
    await swap.pwrite(0, b"B" * (3 * MiB))
    seen: set[bytes] = set()
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            data = bytes(await swap.pread(MiB - 4096, MiB + 8192))  # spans three VDI blocks
            assert data in (b"A" * len(data), b"B" * len(data)), "a mixed read"
            seen.add(data[:1])
            await asyncio.sleep(0)
    tasks = [asyncio.create_task(reader()) for _ in range(3)]
    await asyncio.sleep(0.02)
    await snapshot_restore(s.ctx, "disk.vdi", "a")
    await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*tasks)
    assert seen == {b"A", b"B"}
    assert await swap.pread(0, 3) == b"AAA"
    await s.stop()


async def test_a_merge_back_into_a_raw_disk_keeps_the_host_cache_policy(tmp_path: Path) -> None:
    from blockyard.block.hostcache_direct import DirectFile

    s = Served(tmp_path)
    await ops.media_add(s.ctx, str(tmp_path / "disk.img"), create_size=SIZE)
    await attach_ops.controller_add(s.ctx, "c", "sata", host_cache=False)
    await attach_ops.attach(s.ctx, "c", "disk.img")
    swap = s.ctx.live.open_layer(s.reg.media()[0].uuid)  # type: ignore[union-attr]
    assert isinstance(swap, SwapLayer) and isinstance(swap.chain, DirectFile)
    await snapshot_take(s.ctx, "disk.img", name="s")
    await swap.pwrite(0, b"d" * 4096)
    await delete_snapshot(s.ctx, "disk.img", "s")
    assert isinstance(swap.chain, DirectFile) and await swap.pread(0, 4096) == b"d" * 4096
    await s.stop()
