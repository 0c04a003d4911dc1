"""SwapLayer: pausing drains requests in flight and holds new ones; the chain is
replaced under the sessions; dirty ranges are recorded; raw bypasses only while open."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from blockyard.block.chain_swap import SwapLayer, coalesce
from blockyard.block.layer import Buffer
from blockyard.block.ram import RamDisk
from blockyard.block.raw import RawFile
from blockyard.errors import BlockError


class SlowDisk(RamDisk):
    """Writes wait for ``gate`` (to hold a request in flight)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        self.started.set()
        await self.gate.wait()
        await super()._pwrite(offset, data, fua)


async def test_pause_drains_in_flight_holds_new_and_swaps() -> None:
    old, new = SlowDisk(1 << 20), RamDisk(1 << 20)
    swap = SwapLayer(old)
    write = asyncio.create_task(swap.pwrite(0, b"old"))
    await old.started.wait()
    paused = asyncio.Event()
    order: list[str] = []

    async def snapshot() -> None:
        async with swap.paused() as chain:
            paused.set()
            order.append("paused")
            assert chain is old and old.data[:3] == b"old"  # the write finished first
            new.data[:3] = old.data[:3]
            swap.replace(new)
    op = asyncio.create_task(snapshot())
    await asyncio.sleep(0.01)
    assert not paused.is_set()  # waits for the write in flight
    later = asyncio.create_task(swap.pwrite(3, b"new"))
    old.gate.set()
    await asyncio.gather(write, op, later)
    assert order == ["paused"] and swap.chain is new and swap.swaps == 1
    assert await swap.pread(0, 6) == b"oldnew"  # the held write went to the new chain
    assert old.data[3:6] == bytes(3)


async def test_replace_rules() -> None:
    swap = SwapLayer(RamDisk(4096))
    with pytest.raises(RuntimeError):
        swap.replace(RamDisk(4096))
    async with swap.paused():
        with pytest.raises(BlockError) as err:
            swap.replace(RamDisk(8192))
        assert err.value.errno == errno.EINVAL


async def test_tracking_records_written_ranges() -> None:
    swap = SwapLayer(RamDisk(1 << 20))
    await swap.pwrite(0, b"x")
    swap.track()
    await swap.pwrite(4096, b"y" * 4096)
    await swap.zero(6000, 10000)
    await swap.trim(65536, 4096)
    await swap.pread(0, 100)
    assert swap.untrack() == [(4096, 11904), (65536, 4096)]
    assert swap.untrack() == []
    assert coalesce([(10, 5), (0, 10), (30, 0), (12, 1)]) == [(0, 15)]


async def test_raw_bypasses_only_while_open(tmp_path: Path) -> None:
    path = tmp_path / "r.img"
    path.write_bytes(bytes(8192))
    raw = RawFile(path)
    swap = SwapLayer(raw)
    assert swap.sendfile_fd == raw.fd and swap.sync_pread is not None
    async with swap.paused():
        assert swap.sendfile_fd is None and swap.sync_pread is None
        swap.replace(RamDisk(8192))
    assert swap.sendfile_fd is None  # a RAM disk offers none
    await raw.close()
