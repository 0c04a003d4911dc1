"""Hosted sparse extents: the per-request path (image-formats.md §2.2-§2.4, §7).

Lookup is two array indexings: ``gts[grain // n][grain % n]`` with every GT
held in memory (4 bytes per grain, loaded and validated at open).  A GTE is

* 0: unallocated -- zeros, or the parent's data in a differencing image;
* 1 with the zeroed-grain flag: zeros that mask the parent;
* anything else: the sector of the grain in this file (for compressed
  extents, the sector of the grain's marker).

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

Data for allocated grains goes straight to the file through ``RawFile``
(inline for small requests, the thread pool for large ones).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import struct
import sys
import threading
import zlib
from array import array
from collections.abc import Callable

from blockyard.block.formats.vmdk_extent import SECTOR, Backing, VmdkExtent, merge
from blockyard.block.formats.vmdk_layout import GTE_ZEROED, SparseHeader, Tables, holes
from blockyard.block.layer import HOLE, ZERO, Buffer, Extent, FileMap
from blockyard.block.raw import RawFile
from blockyard.errors import BlockError

ALIGN = 4096  # new grain tables and grains start 4 KiB aligned
MAX_SECTOR = 1 << 32  # GTEs are u32 sector numbers
ENTRIES_PER_SECTOR = SECTOR // 4
GRAIN_MARKER = struct.Struct("<QI")  # LBA, compressed size (§2.4)
EXTENT_STEPS = 1 << 16  # grains looked at per extents() call


def le_bytes(values: array) -> bytes:
    if sys.byteorder == "big":
        values = array("I", values)
        values.byteswap()
    return values.tobytes()


class SparseExtent(VmdkExtent):
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
    # could have looked it up before it was freed is still running.
    def _enter(self) -> int:
        e = self.epoch
        self.active[e] = self.active.get(e, 0) + 1
        return e

    def _leave(self, e: int) -> None:
        left = self.active[e] - 1
        if left:
            self.active[e] = left
        else:
            del self.active[e]

    def _pin(self) -> int:
        """From any thread: like ``_enter``, for a mapped read still to be sent."""
        with self._map_lock:
            e = self.epoch
            self.mapped[e] = self.mapped.get(e, 0) + 1
            return e

    def _unpin(self, e: int) -> None:
        with self._map_lock:
            left = self.mapped[e] - 1
            if left:
                self.mapped[e] = left
            else:
                del self.mapped[e]

    def sync_map(self, off: int, length: int, fmap: FileMap) -> Callable[[], None] | None:
        """Plain grains only: none compressed, zeroed, unallocated or the parent's.  The
        epoch stays pinned until release, so a grain freed meanwhile is not reused."""
        raw = self.raw
        if raw is None or raw.fd < 0 or self.h.compressed:
            return None
        e = self._pin()  # before the lookup: a grain freed after it is freed in epoch >= e
        runs = self._plan_runs(off, length)
        if sum(n for kind, _pos, n, _where in runs if kind == "file") != length:
            self._unpin(e)
            return None
        for _kind, _pos, n, where in runs:
            fmap.add(raw.fd, where, n)
        return functools.partial(self._unpin, e)

    # ---- read ------------------------------------------------------------------------
    async def read(self, off: int, length: int) -> Buffer:
        g, within = divmod(off, self.grain)
        v = self.gte(g)
        assert self.raw is not None
        if within + length <= self.grain and self.is_data(v) and not self.h.compressed:
            e = self._enter()
            try:
                return await self.raw._pread(v * SECTOR + within, length)
            finally:
                self._leave(e)
        e = self._enter()
        try:
            return await self._read_runs(off, length)
        finally:
            self._leave(e)

    async def _read_runs(self, off: int, length: int) -> Buffer:
        """Read a multi-grain range, joining grains that are contiguous in the file; a
        range that is one run in the file is a single pread with no copy."""
        assert self.raw is not None
        runs = self._plan_runs(off, length)
        if len(runs) == 1 and runs[0][0] == "file" and runs[0][2] == length:
            return await self.raw._pread(runs[0][3], length)
        out = bytearray(length)
        for kind, pos, n, where in runs:
            if kind == "file":
                out[pos:pos + n] = await self.raw._pread(where, n)
            elif kind == "compressed":
                g, within = divmod(off + pos, self.grain)
                out[pos:pos + n] = (await self._grain_data(g, where))[within:within + n]
            elif kind == "backing" and self.backing is not None:
                out[pos:pos + n] = await self.backing(self.start + off + pos, n)
        return out

    def _plan_runs(self, off: int, length: int) -> list[tuple[str, int, int, int]]:
        """(kind, position in the request, length, file offset or GTE) per run."""
        runs: list[tuple[str, int, int, int]] = []
        pos = 0
        while pos < length:
            g, within = divmod(off + pos, self.grain)
            n = min(self.grain - within, length - pos)
            v = self.gte(g)
            if self.is_data(v) and not self.h.compressed:
                fo = v * SECTOR + within
                last = runs[-1] if runs else None
                if last and last[0] == "file" and last[3] + last[2] == fo \
                        and last[1] + last[2] == pos:
                    runs[-1] = ("file", last[1], last[2] + n, last[3])
                else:
                    runs.append(("file", pos, n, fo))
            elif self.is_data(v):
                runs.append(("compressed", pos, n, v))
            elif v == 0 and self.backing is not None:
                runs.append(("backing", pos, n, 0))
            pos += n
        return runs

    async def _grain_data(self, g: int, v: int) -> bytes:
        """A compressed grain: marker (LBA, size) + zlib stream (§2.4)."""
        if self._cache is not None and self._cache[0] == g:
            return self._cache[1]
        assert self.raw is not None
        lba, size = GRAIN_MARKER.unpack(bytes(await self.raw._pread(v * SECTOR, 12)))
        if lba != g * self.h.grain_size or not 0 < size <= 2 * self.grain + 1024:
            raise BlockError(errno.EIO, f"{self.path}: bad grain marker at sector {v}")
        comp = bytes(await self.raw._pread(v * SECTOR + 12, size))
        try:
            d = zlib.decompressobj()
            data = d.decompress(comp, self.grain)
        except zlib.error as exc:
            raise BlockError(errno.EIO, f"{self.path}: grain at sector {v}: {exc}") from None
        if d.unconsumed_tail:
            raise BlockError(errno.EIO, f"{self.path}: grain at sector {v} inflates too large")
        data = data + bytes(self.grain - len(data))
        self._cache = (g, data)
        return data

    # ---- write -----------------------------------------------------------------------
    async def mark_dirty(self) -> None:
        if not self.marked:
            self.marked = True
            self.h.unclean_shutdown = 1
            await self._write_header()

    async def _write_header(self) -> None:
        assert self.raw is not None
        await self.raw._pwrite(0, self.h.build(), False)

    async def write(self, off: int, data: Buffer) -> None:
        e = self._enter()
        try:
            await self._write_runs(off, memoryview(data).cast("B"))
        finally:
            self._leave(e)

    async def _write_runs(self, off: int, mv: memoryview) -> None:
        assert self.raw is not None
        pos = run_at = run_len = run_file = 0
        while pos < len(mv):
            g, within = divmod(off + pos, self.grain)
            n = min(self.grain - within, len(mv) - pos)
            v = self.gte(g)
            if self.is_data(v) and run_len and run_file + run_len == v * SECTOR + within:
                run_len += n
            else:
                if run_len:
                    await self.raw._pwrite(run_file, mv[run_at:run_at + run_len], False)
                    run_len = 0
                if self.is_data(v):
                    run_at, run_file, run_len = pos, v * SECTOR + within, n
                else:
                    await self._allocate(g, within, mv[pos:pos + n])
            pos += n
        if run_len:
            await self.raw._pwrite(run_file, mv[run_at:run_at + run_len], False)

    async def _allocate(self, g: int, within: int, chunk: memoryview) -> None:
        async with self.lock:
            v = self.gte(g)
            assert self.raw is not None
            if self.is_data(v):  # another request allocated it meanwhile
                await self.raw._pwrite(v * SECTOR + within, chunk, False)
                return
            buf: Buffer = chunk
            if len(chunk) != self.grain:
                whole = bytearray(await self._base_grain(g, v))
                whole[within:within + len(chunk)] = chunk
                buf = whole
            fo = self._place_grain(g)
            await self.raw._pwrite(fo, buf, False)
            self._set_gte(g, fo // SECTOR)

    async def _base_grain(self, g: int, v: int) -> Buffer:
        """What an unallocated grain holds before a partial write (§2.3)."""
        if v == 0 and self.backing is not None:
            start = g * self.grain
            n = min(self.grain, self.size - start)
            data = await self.backing(self.start + start, n)
            return bytes(data) + bytes(self.grain - n)
        return bytes(self.grain)

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

    # ---- zero / trim -----------------------------------------------------------------
    async def zero(self, off: int, length: int, may_trim: bool) -> None:
        e = self._enter()
        try:
            pos = 0
            while pos < length:
                g, within = divmod(off + pos, self.grain)
                n = min(self.grain - within, length - pos)
                whole = n == self.grain or (within == 0 and g * self.grain + n == self.size)
                if whole:
                    await self._zero_grain(g)
                else:
                    await self._zero_part(g, within, n, may_trim)
                pos += n
        finally:
            self._leave(e)

    async def _zero_part(self, g: int, within: int, n: int, may_trim: bool) -> None:
        v = self.gte(g)
        if self.is_data(v):
            assert self.raw is not None
            await self.raw._zero(v * SECTOR + within, n, may_trim, False, False)
        elif v == 0 and self.backing is not None:  # must mask the parent: copy up
            await self._allocate(g, within, memoryview(bytes(n)))

    async def _zero_grain(self, g: int) -> None:
        """A whole grain reads zeros from now on (§2.3).

        Zeroed-grain GTE (1) where the header allows it; else in a base image
        GTE 0 (unallocated reads zeros); else (a child, which must keep masking
        its parent) a grain of zeros.  A grain no longer named is released.
        """
        async with self.lock:
            v = self.gte(g)
            if (v == GTE_ZEROED and self.h.zero_grain) or (v == 0 and self.backing is None):
                return  # reads zeros already
            if self.h.zero_grain or self.backing is None:
                self._set_gte(g, GTE_ZEROED if self.h.zero_grain else 0)
                if self.is_data(v):
                    await self._release(v * SECTOR)
                return
            assert self.raw is not None
            if self.is_data(v):
                await self.raw._zero(v * SECTOR, self.grain, True, False, False)
            elif self.backing is not None:
                fo = self._place_grain(g)
                await self.raw._pwrite(fo, bytes(self.grain), False)
                self._set_gte(g, fo // SECTOR)

    async def _release(self, fo: int) -> None:
        """A grain no GTE names any more: punch it; reuse it after the next flush."""
        assert self.raw is not None
        await self.raw._trim(fo, self.grain, False)
        self.freed.append((self.epoch, fo))

    # ---- extents ---------------------------------------------------------------------
    async def extents(self, off: int, length: int) -> list[Extent]:
        """Per grain; an absent GT is one step.  At most EXTENT_STEPS steps per call
        (the Layer contract allows a shorter answer), so huge sparse disks stay cheap."""
        out: list[Extent] = []
        pos = steps = 0
        unalloc = HOLE if self.backing is not None else HOLE | ZERO
        span = self.n * self.grain
        while pos < length and steps < EXTENT_STEPS:
            steps += 1
            if (off + pos) // span not in self.t.gts:  # no grain table: all unallocated
                n = min(span - (off + pos) % span, length - pos)
                merge(out, n, unalloc)
                pos += n
                continue
            g, within = divmod(off + pos, self.grain)
            n = min(self.grain - within, length - pos)
            v = self.gte(g)
            merge(out, n, 0 if self.is_data(v) else (ZERO if v == GTE_ZEROED else unalloc))
            pos += n
        return out

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
            oldest = min(min(self.active, default=self.epoch + 1),
                         min(self.mapped, default=self.epoch + 1))
            keep = [(e, fo) for e, fo in self.freed if e >= oldest]
            self.free.extend(fo for e, fo in self.freed if e < oldest)
            self.freed = keep
            self.epoch += 1

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
