"""Hosted sparse extents: the metadata side (image-formats.md §2.2-§2.3, §7).

``SparseMeta`` holds what the request path in ``vmdk_sparse`` stands on: the
header, the grain directory and every grain table (in memory), the lookup,
the choice of slots for new grains and tables, and the flush that makes them
durable.

Allocation, serialized by ``lock``, appends at ``next_free`` or reuses a
slot nothing on disk names: a hole found at open (space freed or leaked in
an earlier session) or a grain freed before the last completed flush.  Crash ordering (§7): a new
grain -- copied up or zero-filled to a whole grain -- is written first; the
GTE only changes in memory.  ``flush`` then (1) writes brand-new grain
tables, which nothing references yet, and ``fdatasync``s, so every grain
and table is durable; (2) writes the changed GT sectors, GT and then RGT,
and the GD/RGD sectors naming new tables, and ``fdatasync``s again.  A
crash therefore loses only unflushed allocations (leaked space that
``check`` reports), never exposes a GTE pointing at unwritten data.  The
header's uncleanShutdown byte is set before the first change and cleared
by a clean close.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys
import threading
from array import array

from blockyard.block.formats.sparse_common import SlotEpochs, drop, hold
from blockyard.block.formats.vmdk_extent import SECTOR, Backing, VmdkExtent
from blockyard.block.formats.vmdk_layout import GTE_ZEROED, SparseHeader, Tables, holes
from blockyard.block.raw import RawFile
from blockyard.errors import BlockError

ALIGN = 4096  # new grain tables and grains start 4 KiB aligned
MAX_SECTOR = 1 << 32  # GTEs are u32 sector numbers
ENTRIES_PER_SECTOR = SECTOR // 4


def le_bytes(values: array) -> bytes:
    if sys.byteorder == "big":
        values = array("I", values)
        values.byteswap()
    return values.tobytes()


class SparseMeta(SlotEpochs, VmdkExtent):
    """A sparse extent's header, tables and allocation; ``SparseExtent`` adds the I/O."""

    kind = "SPARSE"
    has_metadata = True

    def __init__(self, raw: RawFile, header: SparseHeader, tables: Tables, *, size: int,
                 access: str = "RW") -> None:
        super().__init__(size, access)
        self.raw = raw
        self.path = raw.path
        self.h = header
        self.t = tables
        self.grain = header.grain_size * SECTOR
        self.n = header.num_gtes_per_gt
        self.dirty_at_open = bool(header.unclean_shutdown)
        self.lock = asyncio.Lock()
        end = os.fstat(raw.fd).st_size
        self.next_free = -(-max(end, header.overhead * SECTOR) // ALIGN) * ALIGN
        self.new_gts: set[int] = set()
        self.dirty: dict[int, set[int]] = {}  # GD index -> dirty GT sector numbers
        self.freed: list[tuple[int, int]] = []  # (epoch, grain byte offset) no GTE names
        # grain slots nothing on disk references (freed or leaked before): reusable
        compressed = header.compressed or raw.read_only
        self.free: list[int] = [] if compressed else holes(header, tables, ALIGN)[::-1]
        self.epoch = 0  # bumped by every flush
        self.active: dict[int, int] = {}  # epoch -> requests started in it, still running
        self.mapped: dict[int, int] = {}  # epoch -> sync_map answers not yet released
        self._map_lock = threading.Lock()  # guards ``mapped`` and the epoch's increment
        self.marked = False
        self.backing: Backing | None = None
        self._cache: tuple[int, bytes] | None = None  # last decompressed grain

    # ---- lookup ----------------------------------------------------------------------
    def gte(self, grain: int) -> int:
        gt = self.t.gts.get(grain // self.n)
        return gt[grain % self.n] if gt is not None else 0

    def is_data(self, v: int) -> bool:
        return v > 1 or (v == GTE_ZEROED and not self.h.zero_grain)

    def set_backing(self, backing: Backing | None) -> None:
        self.backing = backing

    # ---- request bookkeeping: a freed grain is reused only when no request that
    # could have looked it up before it was freed is still running (``SlotEpochs``,
    # whose ``_enter``/``_leave`` count requests; mapped reads are counted here).
    def _pin(self) -> int:
        """From any thread: like ``_enter``, for a mapped read still to be sent."""
        with self._map_lock:
            return hold(self.mapped, self.epoch)

    def _unpin(self, e: int) -> None:
        with self._map_lock:
            drop(self.mapped, e)

    # ---- allocation: grain slots and grain tables ------------------------------------
    def _place_grain(self, g: int) -> int:
        self._ensure_gt(g // self.n)
        if self.free:
            return self.free.pop()
        return self._reserve(self.grain)

    def _reserve(self, nbytes: int) -> int:
        fo = self.next_free
        if (fo + nbytes) // SECTOR >= MAX_SECTOR:
            raise BlockError(errno.ENOSPC, f"{self.path}: sparse extent file is full (2 TiB)")
        self.next_free = -(-(fo + nbytes) // ALIGN) * ALIGN
        return fo

    def _ensure_gt(self, i: int) -> None:
        if self.t.gd[i]:
            return
        pair = self.h.gt_sectors * SECTOR * (2 if self.t.rgd is not None else 1)
        fo = self._reserve(pair)
        self.t.gd[i] = fo // SECTOR
        if self.t.rgd is not None:
            self.t.rgd[i] = fo // SECTOR + self.h.gt_sectors
        self.t.gts[i] = array("I", bytes(4 * self.n))
        self.new_gts.add(i)

    def _set_gte(self, g: int, value: int) -> None:
        i, j = divmod(g, self.n)
        self._ensure_gt(i)
        self.t.gts[i][j] = value
        if i not in self.new_gts:
            self.dirty.setdefault(i, set()).add(j // ENTRIES_PER_SECTOR)

    # ---- header ----------------------------------------------------------------------
    async def mark_dirty(self) -> None:
        if not self.marked:
            self.marked = True
            self.h.unclean_shutdown = 1
            await self._write_header()

    async def _write_header(self) -> None:
        assert self.raw is not None
        await self.raw._pwrite(0, self.h.build(), False)

    # ---- flush / close ---------------------------------------------------------------
    async def flush(self) -> None:
        async with self.lock:
            await self._publish()

    async def _publish(self) -> None:
        assert self.raw is not None
        if not self.new_gts and not self.dirty:
            await self.raw._flush()
            self._recycle()
            return
        for i in sorted(self.new_gts):  # phase 1: tables nothing references yet
            await self._write_gt(i, 0, self.h.gt_sectors)
        await self.raw._flush()
        for i, sectors in sorted(self.dirty.items()):  # phase 2: publish
            for s in sorted(sectors):
                await self._write_gt(i, s, 1)
        for s in sorted({i // ENTRIES_PER_SECTOR for i in self.new_gts}):
            await self._write_gd_sector(s)
        await self.raw._flush()
        self.new_gts.clear()
        self.dirty.clear()
        self._recycle()

    def _recycle(self) -> None:
        with self._map_lock:
            self._reuse_freed(min(self._oldest_running(),
                                  min(self.mapped, default=self.epoch + 1)))

    async def _write_gt(self, i: int, first: int, count: int) -> None:
        assert self.raw is not None
        a, b = first * ENTRIES_PER_SECTOR, (first + count) * ENTRIES_PER_SECTOR
        data = le_bytes(self.t.gts[i][a:b])
        await self.raw._pwrite((self.t.gd[i] + first) * SECTOR, data, False)
        if self.t.rgd is not None and self.t.rgt_ok and self.t.rgd[i]:
            await self.raw._pwrite((self.t.rgd[i] + first) * SECTOR, data, False)

    async def _write_gd_sector(self, s: int) -> None:
        assert self.raw is not None
        a, b = s * ENTRIES_PER_SECTOR, (s + 1) * ENTRIES_PER_SECTOR
        await self.raw._pwrite(self.h.gd_offset * SECTOR + s * SECTOR,
                               le_bytes(self.t.gd[a:b]), False)
        if self.t.rgd is not None and self.t.rgt_ok:
            await self.raw._pwrite(self.h.rgd_offset * SECTOR + s * SECTOR,
                                   le_bytes(self.t.rgd[a:b]), False)

    async def close(self) -> None:
        if self.raw is None or self.raw.fd < 0:
            return
        if not self.raw.read_only:
            await self.flush()
            if self.marked:
                self.h.unclean_shutdown = 0
                await self._write_header()
                await self.raw._flush()
        await self.raw._close()
