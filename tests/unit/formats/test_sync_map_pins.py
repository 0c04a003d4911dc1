"""``sync_map`` answers pin the image: while one is unreleased nothing moves,
frees-and-reuses or truncates the bytes it names; maintenance waits for the
pins, and no new map is handed out while it waits or runs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from blockyard.block.formats import create_image
from blockyard.block.formats.vdi_vhd_common import IoGate
from blockyard.block.formats.vmdk import VmdkImage
from blockyard.block.formats.vmdk_sparse import SparseExtent
from blockyard.block.layer import FileMap

MiB = 1 << 20
G = 64 << 10


def mapped_bytes(fmap: FileMap) -> bytes:
    return b"".join(os.pread(fd, n, off) for fd, off, n in fmap)


async def spin(task: asyncio.Task[Any], turns: int = 50) -> None:
    """Let the loop run a while; the task must still be waiting."""
    for _ in range(turns):
        await asyncio.sleep(0)
    assert not task.done()


async def test_thread_pins_hold_off_exclusive_and_are_refused_while_it_waits() -> None:
    gate = IoGate()
    assert await asyncio.to_thread(gate.pin)
    inside = asyncio.Event()

    async def hold() -> None:
        async with gate.exclusive():
            inside.set()
            assert not gate.pin()

    task = asyncio.create_task(hold())
    await spin(task)
    assert not inside.is_set()
    assert not await asyncio.to_thread(gate.pin)
    await asyncio.to_thread(gate.unpin)  # the last pin, from another thread, wakes it
    await asyncio.wait_for(task, 10)
    assert inside.is_set() and gate.pin()
    gate.unpin()


async def test_exclusive_without_pins_does_not_wait() -> None:
    gate = IoGate()
    gate.pin()
    gate.unpin()
    async with gate.exclusive():
        pass


async def vdi_with_blocks(tmp_path: Path, zero_block: int | None = None) -> tuple[Any, bytes]:
    """Eight 1 MiB blocks in slots 0..7; ``zero_block`` allocated but all zeros."""
    img = create_image(tmp_path / "m.vdi", 8 * MiB, "vdi")
    blob = bytearray(os.urandom(8 * MiB))
    await img.pwrite(0, blob)
    if zero_block is not None:
        blob[zero_block * MiB:(zero_block + 1) * MiB] = bytes(MiB)
        await img.pwrite(zero_block * MiB, bytes(MiB))  # in place: the slot stays
    await img.flush()
    return img, bytes(blob)


async def test_vdi_compaction_waits_for_a_pinned_map_of_the_block_it_moves(
        tmp_path: Path) -> None:
    img, blob = await vdi_with_blocks(tmp_path, zero_block=2)
    fmap = img.sync_map(7 * MiB, MiB)  # the last slot: compaction moves it into slot 2
    assert fmap is not None
    task = asyncio.create_task(img.compact())
    await spin(task)
    assert img.sync_map(0, MiB) is None  # no new map while maintenance waits
    assert mapped_bytes(fmap) == blob[7 * MiB:]
    fmap.release()
    assert await asyncio.wait_for(task, 30) > 0
    assert img.bmap[7] == 2
    again = img.sync_map(7 * MiB, MiB)
    assert again is not None and again[0][1] != fmap[0][1]
    assert mapped_bytes(again) == blob[7 * MiB:]
    again.release()
    await img.close()


async def test_vdi_whole_block_trim_waits_for_pins(tmp_path: Path) -> None:
    img, blob = await vdi_with_blocks(tmp_path)
    fmap = img.sync_map(MiB, MiB)
    assert fmap is not None
    task = asyncio.create_task(img.trim(MiB, MiB))  # frees the slot: must wait
    await spin(task)
    assert mapped_bytes(fmap) == blob[MiB:2 * MiB]
    fmap.release()
    await asyncio.wait_for(task, 30)
    assert img.sync_map(MiB, MiB) is None  # zero-marked now
    await img.close()


async def test_vhd_compaction_waits_for_pins(tmp_path: Path) -> None:
    img = create_image(tmp_path / "m.vhd", 8 * MiB, "vhd")
    blob = os.urandom(8 * MiB)
    await img.pwrite(0, blob)
    await img.zero(2 * MiB, 2 * MiB)  # block 1 reads zeros: compaction frees it
    await img.flush()
    fmap = img.sync_map(6 * MiB, 2 * MiB)  # the last block, moved into the gap
    assert fmap is not None
    task = asyncio.create_task(img.compact())
    await spin(task)
    assert img.sync_map(0, MiB) is None
    assert mapped_bytes(fmap) == blob[6 * MiB:]
    fmap.release()
    await asyncio.wait_for(task, 30)
    await img.pread(6 * MiB, 2 * MiB)
    again = img.sync_map(6 * MiB, 2 * MiB)
    assert again is not None and again[0][1] != fmap[0][1]
    assert mapped_bytes(again) == blob[6 * MiB:]
    again.release()
    await img.close()


async def test_vmdk_grain_freed_under_a_pinned_map_is_reused_only_after_release(
        tmp_path: Path) -> None:
    img = create_image(tmp_path / "m.vmdk", MiB, "vmdk")
    assert isinstance(img, VmdkImage)
    extent = img.extents_[0]
    assert isinstance(extent, SparseExtent)
    await img.pwrite(0, os.urandom(4 * G))
    await img.flush()
    fmap = img.sync_map(G, G)
    assert fmap is not None
    grain = fmap[0][1]
    await img.zero(G, G)  # grain 1 unallocated now; its space is freed
    await img.flush()  # would make the space reusable -- not while the map is pinned
    assert grain not in extent.free
    await img.pwrite(8 * G, os.urandom(G))
    assert extent.gte(8) * 512 != grain
    fmap.release()
    await img.flush()
    assert grain in extent.free
    await img.pwrite(9 * G, os.urandom(G))
    assert extent.gte(9) * 512 == grain
    await img.close()


async def test_vmdk_compaction_waits_for_pins(tmp_path: Path) -> None:
    img = create_image(tmp_path / "c.vmdk", MiB, "vmdk")
    blob = os.urandom(MiB)
    await img.pwrite(0, blob)
    await img.flush()
    fmap = img.sync_map(0, MiB)
    assert fmap is not None
    task = asyncio.create_task(img.compact())
    await spin(task)
    assert img.sync_map(0, MiB) is None
    assert mapped_bytes(fmap) == blob
    fmap.release()
    await asyncio.wait_for(task, 30)
    again = img.sync_map(0, MiB)
    assert again is not None and mapped_bytes(again) == blob
    again.release()
    await img.close()
