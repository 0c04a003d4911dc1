"""Hosted sparse extents: the per-request path (image-formats.md §2.2-§2.4, §7).

Lookup is two array indexings: ``gts[grain // n][grain % n]`` with every GT
held in memory (4 bytes per grain, loaded and validated at open).  A GTE is

* 0: unallocated -- zeros, or the parent's data in a differencing image;
* 1 with the zeroed-grain flag: zeros that mask the parent;
* anything else: the sector of the grain in this file (for compressed
  extents, the sector of the grain's marker).

Allocation, the tables and the flush ordering that keeps a crash from
exposing unwritten data are in ``vmdk_sparse_meta`` (``SparseMeta``, the
base class here).

Data for allocated grains goes straight to the file through ``RawFile``
(inline for small requests, the thread pool for large ones).
"""

from __future__ import annotations

import errno
import functools
import struct
import zlib
from collections.abc import Callable

from blockyard.block.formats.sparse_common import pieces
from blockyard.block.formats.vmdk_extent import SECTOR, merge
from blockyard.block.formats.vmdk_layout import GTE_ZEROED
from blockyard.block.formats.vmdk_sparse_meta import ALIGN, SparseMeta, le_bytes
from blockyard.block.layer import HOLE, ZERO, Buffer, Extent, FileMap
from blockyard.errors import BlockError

# ALIGN and le_bytes are imported from here by vmdk_create and vmdk_maint
__all__ = ["ALIGN", "EXTENT_STEPS", "GRAIN_MARKER", "SparseExtent", "le_bytes"]

GRAIN_MARKER = struct.Struct("<QI")  # LBA, compressed size (§2.4)
EXTENT_STEPS = 1 << 16  # grains looked at per extents() call


class SparseExtent(SparseMeta):
    # ---- zero-copy reads ---------------------------------------------------------------
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
        for g, within, pos, n in pieces(off, length, self.grain):
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
    async def write(self, off: int, data: Buffer) -> None:
        e = self._enter()
        try:
            await self._write_runs(off, memoryview(data).cast("B"))
        finally:
            self._leave(e)

    async def _write_runs(self, off: int, mv: memoryview) -> None:
        assert self.raw is not None
        run_at = run_len = run_file = 0
        for g, within, pos, n in pieces(off, len(mv), self.grain):
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

    # ---- zero / trim -----------------------------------------------------------------
    async def zero(self, off: int, length: int, may_trim: bool) -> None:
        e = self._enter()
        try:
            for g, within, _pos, n in pieces(off, length, self.grain):
                whole = n == self.grain or (within == 0 and g * self.grain + n == self.size)
                if whole:
                    await self._zero_grain(g)
                else:
                    await self._zero_part(g, within, n, may_trim)
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
