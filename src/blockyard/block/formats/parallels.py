"""Parallels HDD v2 expandable images (image-formats.md §4, §7).

Reads and writes both magics: ``WithoutFreeSpace`` (BAT entries in sectors;
the only one VirtualBox opens, so ``create`` writes it by default) and
``WithouFreSpacExt`` (BAT entries in clusters; what qemu writes).  Fixed
Parallels disks are plain raw files and out of scope here.

Request path: ``bat[offset // cluster]`` is 0 (unallocated: zeros) or the
cluster's location in BAT units.  Allocated clusters are read and written
straight through ``RawFile`` (inline when small, thread pool when large).

Allocation (serialized by ``lock``) writes a whole cluster -- the request's
data inside zeros -- into a slot no BAT entry on disk names (a hole found at
open, a cluster freed before the last flush, or the end of the file); the
BAT changes only in memory.
``flush`` then ``fdatasync``s (the data is durable), writes the changed BAT
sectors, and ``fdatasync``s again (§7: data before the map entry; qemu keeps
the BAT in memory the same way).  A crash loses unflushed allocations as
leaked space only.  The in-use mark (0x746F6E59) is written before the first
change and replaced by 0x312E3276 ("closed", per the spec) on clean close;
``ImageInfo.dirty`` reports a mark found at open.  At the first change the
format-extension pointer (dirty bitmaps we do not maintain, which would go
stale) and the "empty image" flag are cleared.
"""

from __future__ import annotations

import asyncio
import errno
import os
from array import array
from typing import Any

from blockyard.block.formats import parallels_layout as pl
from blockyard.block.formats.base import CheckReport, ImageInfo, Progress
from blockyard.block.formats.sparse_common import SlotEpochs, WritableImage, pieces
from blockyard.block.layer import HOLE, ZERO, Buffer, Extent
from blockyard.block.raw import RawFile
from blockyard.errors import BlockError, MediaError

SECTOR = pl.SECTOR
BAT_PER_SECTOR = SECTOR // 4


class ParallelsImage(SlotEpochs, WritableImage):
    format_name = "parallels"

    def __init__(self, raw: RawFile, header: pl.Header, bat: array) -> None:
        super().__init__()
        self.raw = raw
        self.path = raw.path
        self.read_only = raw.read_only
        self.h = header
        self.bat = bat
        self.size = header.disk_size
        self.cluster = header.cluster
        self.dirty_at_open = header.inuse == pl.INUSE
        self.lock = asyncio.Lock()
        self.marked = False
        self.dirty_sectors: set[int] = set()
        self.freed: list[tuple[int, int]] = []  # (epoch, sector) of clusters no entry names
        self.free: list[int] = [] if raw.read_only else self._holes()[::-1]
        self.epoch = 0
        self.active: dict[int, int] = {}
        self.next_free = self._first_free()

    def _first_free(self) -> int:
        """Sector of the next cluster slot: after the data area, all clusters and EOF."""
        start = pl.data_start(self.h)
        end = max([start] + [v * self.h.unit + self.h.tracks for v in self.bat if v])
        if self.h.ext_off:
            end = max(end, self.h.ext_off + self.h.tracks)
        eof = -(-os.fstat(self.raw.fd).st_size // SECTOR)
        end = max(end, eof)
        return start + -(-(end - start) // self.h.tracks) * self.h.tracks

    def _holes(self) -> list[int]:
        """Cluster slots (sectors) in the data area that no BAT entry names: reusable."""
        t, pos = self.h.tracks, pl.data_start(self.h)
        out: list[int] = []
        used = sorted([v * self.h.unit for v in self.bat if v] +
                      ([self.h.ext_off] if self.h.ext_off else []))
        for sector in used:
            out += range(pos, sector - t + 1, t) if (sector - pos) % t == 0 else []
            pos = max(pos, sector + t)
        return out

    # ---- driver entry points ---------------------------------------------------------
    @staticmethod
    def probe(head: bytes, size: int) -> bool:
        return head[:16] in (pl.MAGIC_V1, pl.MAGIC_EXT)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> ParallelsImage:
        raw = RawFile(path, read_only=read_only)
        try:
            size = os.fstat(raw.fd).st_size
            h = pl.parse(os.pread(raw.fd, pl.HEADER_SIZE, 0), raw.path)
            pl.validate(h, size, raw.path)
            bat = pl.load_bat(raw.fd, h, size, raw.path)
        except BaseException:
            os.close(raw.fd)
            raise
        return cls(raw, h, bat)

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int, *, variant: str = "dynamic",
               **opts: Any) -> ParallelsImage:
        from blockyard.block.formats.parallels_maint import create

        return create(cls, os.fspath(path), size, variant, **opts)

    # ---- helpers ---------------------------------------------------------------------
    def _where(self, c: int) -> int:
        """Byte offset of cluster ``c`` in the file, 0 if unallocated."""
        v = self.bat[c]
        return v * self.h.unit * SECTOR if v else 0

    # ---- read ------------------------------------------------------------------------
    async def _pread(self, offset: int, length: int) -> Buffer:
        c, within = divmod(offset, self.cluster)
        fo = self._where(c)
        e = self._enter()
        try:
            if within + length <= self.cluster:
                return await self.raw._pread(fo + within, length) if fo else bytes(length)
            return await self._read_runs(offset, length)
        finally:
            self._leave(e)

    async def _read_runs(self, offset: int, length: int) -> Buffer:
        out = bytearray(length)
        run_at = run_len = run_file = 0
        for c, within, pos, n in pieces(offset, length, self.cluster):
            fo = self._where(c)
            if fo:
                if run_len and run_file + run_len == fo + within and run_at + run_len == pos:
                    run_len += n
                else:
                    if run_len:
                        out[run_at:run_at + run_len] = await self.raw._pread(run_file, run_len)
                    run_at, run_file, run_len = pos, fo + within, n
        if run_len:
            out[run_at:run_at + run_len] = await self.raw._pread(run_file, run_len)
        return out

    # ---- write -----------------------------------------------------------------------
    async def _touch(self) -> None:
        async with self.lock:
            if self.marked:
                return
            self.h.inuse = pl.INUSE
            self.h.ext_off = 0  # its dirty bitmaps would go stale
            self.h.flags &= ~pl.FLAG_EMPTY
            await self.raw._pwrite(0, self.h.build(), False)
            self.marked = True

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        if not self.marked:
            await self._touch()
        mv = memoryview(data).cast("B")
        e = self._enter()
        try:
            for c, within, pos, n in pieces(offset, len(mv), self.cluster):
                fo = self._where(c)
                if fo:
                    await self.raw._pwrite(fo + within, mv[pos:pos + n], False)
                else:
                    await self._allocate(c, within, mv[pos:pos + n])
        finally:
            self._leave(e)
        if fua:
            await self._flush()

    async def _allocate(self, c: int, within: int, chunk: memoryview) -> None:
        async with self.lock:
            fo = self._where(c)
            if fo:
                await self.raw._pwrite(fo + within, chunk, False)
                return
            buf: Buffer = chunk
            if len(chunk) != self.cluster:
                whole = bytearray(self.cluster)
                whole[within:within + len(chunk)] = chunk
                buf = whole
            sector = self._place()
            await self.raw._pwrite(sector * SECTOR, buf, False)
            self._set(c, sector // self.h.unit)

    def _place(self) -> int:
        if self.free:
            return self.free.pop()
        sector = self.next_free
        if (sector + self.h.tracks) // self.h.unit >= 1 << 32:
            raise BlockError(errno.ENOSPC, f"{self.path}: BAT cannot address more clusters")
        self.next_free += self.h.tracks
        return sector

    def _set(self, c: int, value: int) -> None:
        self.bat[c] = value
        self.dirty_sectors.add((pl.HEADER_SIZE + 4 * c) // SECTOR)

    # ---- zero / trim -----------------------------------------------------------------
    async def _zero(self, offset: int, length: int, may_trim: bool, fast: bool,
                    fua: bool) -> None:
        if not self.marked:
            await self._touch()
        e = self._enter()
        try:
            for c, within, pos, n in pieces(offset, length, self.cluster):
                whole = n == self.cluster or (within == 0 and offset + pos + n == self.size)
                fo = self._where(c)
                if whole and fo:
                    await self._unmap(c)
                elif fo:
                    await self.raw._zero(fo + within, n, may_trim, False, False)
        finally:
            self._leave(e)
        if fua:
            await self._flush()

    async def _trim(self, offset: int, length: int, fua: bool) -> None:
        await self._zero(offset, length, True, False, fua)

    async def _unmap(self, c: int) -> None:
        async with self.lock:
            fo = self._where(c)
            if fo:
                self._set(c, 0)
                await self.raw._trim(fo, self.cluster, False)
                self.freed.append((self.epoch, fo // SECTOR))

    # ---- extents, flush, close -------------------------------------------------------
    async def _extents(self, offset: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        pos = steps = 0
        while pos < length and steps < 1 << 16:  # a shorter answer is allowed
            steps += 1
            c, within = divmod(offset + pos, self.cluster)
            n = min(self.cluster - within, length - pos)
            flags = 0 if self.bat[c] else HOLE | ZERO
            if out and out[-1].flags == flags:
                out[-1] = Extent(out[-1].length + n, flags)
            else:
                out.append(Extent(n, flags))
            pos += n
        return out

    async def _flush(self) -> None:
        async with self.lock:
            await self._publish()

    async def _publish(self) -> None:
        await self.raw._flush()  # data before the BAT entries naming it
        if self.dirty_sectors:
            for s in sorted(self.dirty_sectors):
                await self._write_bat_sector(s)
            self.dirty_sectors.clear()
            await self.raw._flush()
        self._reuse_freed(self._oldest_running())

    async def _write_bat_sector(self, s: int) -> None:
        """File sector ``s`` (header or BAT): rewrite its BAT part from memory."""
        lo = max(pl.HEADER_SIZE, s * SECTOR)
        hi = min(pl.HEADER_SIZE + 4 * len(self.bat), (s + 1) * SECTOR)
        a, b = (lo - pl.HEADER_SIZE) // 4, (hi - pl.HEADER_SIZE) // 4
        await self.raw._pwrite(lo, pl.bat_bytes(self.bat[a:b]), False)

    async def _close(self) -> None:
        if self.raw.fd < 0:
            return
        if not self.read_only:
            await self._flush()
            if self.marked:
                self.h.inuse = pl.CLOSED
                await self.raw._pwrite(0, self.h.build(), False)
                await self.raw._flush()
        await self.raw._close()

    # ---- ImageLayer ------------------------------------------------------------------
    def info(self) -> ImageInfo:
        h = self.h
        spt = h.nb_sectors // (h.cylinders * h.heads) if h.cylinders and h.heads else 0
        return ImageInfo(
            path=self.path, format="parallels", variant="dynamic", virtual_size=self.size,
            allocated_size=os.fstat(self.raw.fd).st_blocks * SECTOR,
            geometry=(h.cylinders, h.heads, min(spt, 255)), block_size=self.cluster,
            dirty=self.dirty_at_open,
            extra={"magic": h.magic.decode(), "bat_unit": "clusters" if h.ext else "sectors",
                   "data_offset": pl.data_start(h) * SECTOR, "format_extension": h.ext_off,
                   "allocated_clusters": sum(1 for v in self.bat if v)})

    def check(self, repair: bool = False) -> CheckReport:
        from blockyard.block.formats.parallels_maint import check

        return check(self, repair)

    async def compact(self, progress: Progress | None = None) -> int:
        from blockyard.block.formats.parallels_maint import compact

        if self.read_only:
            raise MediaError(f"{self.path}: opened read-only, cannot compact")
        return await compact(self, progress)

    async def resize(self, new_size: int, force: bool = False) -> None:
        from blockyard.block.formats.parallels_maint import resize

        if self.read_only:
            raise MediaError(f"{self.path}: opened read-only, cannot resize")
        await resize(self, new_size, force)
