"""VHD driver: fixed, dynamic and differencing disks (image-formats.md §3).

Size convention.  ``open`` honours the footer's current size (as VirtualBox,
Hyper-V and libvhdi do) and reports the footer's CHS in ``ImageInfo``.
``create`` writes current size = the requested size rounded up to 512, with
the CHS the spec's algorithm computes (§3.4).  When the size is not
CHS-representable we deliberately keep current size = requested size rather
than rounding the disk up as qemu-img does: the guest sees the size it asked
for, and qemu reads it with ``force_size_calc=current_size`` (our creator is
``blky``, which qemu does not know, so by default it would use C*H*S).
Disks above 2040 GiB are refused (§3.4).

Checksums.  Footer and dynamic header checksums are verified on open (a bad
one is a MediaError) and recomputed on every write.  When the trailing footer
is damaged but the copy at offset 0 is good, the image opens from the copy,
nothing is written, and ``check`` reports it (``repair`` rewrites it).

Blocks.  A block is a sector bitmap plus data (2 MiB by default).  Writes set
the bits of exactly the sectors they cover; a clear bit reads as zeros (a
differencing disk will read its parent there), so a partial write into a new
block needs no copy-up.  Unaligned writes are widened to whole sectors.

Crash safety (§7).  An allocation first writes a new footer past the new
block (the footer at EOF stays valid), then the data; bitmaps and BAT live in
memory until ``flush``: fdatasync -> bitmaps -> fdatasync -> BAT entries ->
fdatasync.  A crash leaks the unpublished blocks; ``check`` reports them and
``repair``/``compact`` reclaim them.  VHD has no "open" flag and we add none:
``ImageInfo.dirty`` is always False.

Zero and trim keep blocks allocated (zero-range / punch inside the block);
``compact`` frees all-zero blocks and moves the last blocks into the gaps.
"""

from __future__ import annotations

import os
from array import array
from typing import Any

from blockyard.block.formats import vhd_layout as V
from blockyard.block.formats import vhd_maint
from blockyard.block.formats.base import CheckReport, ImageInfo, Progress
from blockyard.block.formats.vdi_vhd_common import (
    MappedImage,
    is_zero,
    preallocate,
)
from blockyard.block.layer import HOLE, ZERO, Buffer, Extent, FileMap
from blockyard.block.raw import RawFile
from blockyard.errors import MediaError
from blockyard.util.aio import run_blocking

_NOT_LOADED = bytearray()  # a block whose sector bitmap is not in memory yet


class VhdImage(MappedImage):
    format_name = "vhd"

    def __init__(self, path: str, file: RawFile, state: tuple[Any, ...]) -> None:
        super().__init__()
        self._setup(path, file)
        self._load_state(*state)

    def _load_state(self, footer: V.Footer, dyn: V.DynHeader | None, bat: array[int],
                    footer_pos: int, problems: list[str]) -> None:
        self.footer, self.dyn, self.bat = footer, dyn, bat
        self.fixed = footer.disk_type == V.FIXED
        self.is_diff = footer.disk_type == V.DIFF
        self.size = footer.current_size // 512 * 512
        self.problems = problems
        self._footer_pos = footer_pos
        self.block_size = dyn.block_size if dyn else V.DEFAULT_BLOCK_SIZE
        self._bm_bytes = V.bitmap_bytes(self.block_size)
        self.stride = self._bm_bytes + self.block_size
        self._sectors = self.block_size // 512
        self._bitmaps: dict[int, bytearray | None] = {}  # None: every bit set
        self._dirty_bitmaps: set[int] = set()
        self._dirty_bat: set[int] = set()

    # ---- open / create ---------------------------------------------------------
    @staticmethod
    def probe(head: bytes, size: int) -> bool:
        if head[:8] == V.FOOTER_COOKIE:  # dynamic / differencing: footer copy at 0
            return True
        # a fixed VHD has its only footer at EOF: visible only when the whole file is in head
        return len(head) == size >= 512 and head[size - 512:size - 504] == V.FOOTER_COOKIE

    @staticmethod
    def probe_tail(tail: bytes, size: int) -> bool:
        """A fixed VHD: the footer (cookie "conectix") in the last 512 bytes."""
        return size >= 1024 and size % 512 == 0 and tail[-512:-504] == V.FOOTER_COOKIE

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> VhdImage:
        return cls(*cls.open_file(path, read_only, V.load))

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int, *, variant: str = "dynamic",
               **opts: Any) -> VhdImage:
        block_size = int(opts.pop("block_size", V.DEFAULT_BLOCK_SIZE))
        problem = _create_problem(size, variant, block_size, opts)
        if problem:
            raise MediaError(f"{os.fspath(path)}: {problem}")
        size = -(-size // 512) * 512
        footer = V.new_footer(size, V.FIXED if variant == "fixed" else V.DYNAMIC)
        return cls.open(cls.new_file(path, lambda fd: _write_new_image(fd, footer, size,
                                                                         block_size)))

    # ---- data path ---------------------------------------------------------------
    async def _pread(self, offset: int, length: int) -> Buffer:
        if self.fixed:
            return await self.file._pread(offset, length)
        return await super()._pread(offset, length)

    async def _read_piece(self, block: int, inner: int, n: int) -> Buffer:
        await self._gate.enter()
        try:
            entry = self.bat[block]
            if entry == V.BAT_FREE:
                out, gaps = None, [(inner, n)]
            else:
                bm = await self._bitmap(block)
                where = entry * 512 + self._bm_bytes
                if bm is None:  # every sector is here: the common case, one read
                    return await self.file._pread(where + inner, n)
                out, gaps = bytearray(n), []
                for start, count, isset in V.runs(bm, inner, n):
                    if isset:
                        out[start - inner:start - inner + count] = await self.file._pread(
                            where + start, count)
                    else:
                        gaps.append((start, count))
        finally:
            self._gate.leave()
        if not self.is_diff:  # clear bits and free blocks read as zeros
            return out if out is not None else bytes(n)
        out = out if out is not None else bytearray(n)
        base = block * self.block_size
        for start, count in gaps:  # §3.3: in a differencing disk they read the parent
            out[start - inner:start - inner + count] = await self._read_parent(base + start, count)
        return out

    def _map_into(self, fmap: FileMap, offset: int, length: int) -> bool:
        fd = self.file.fd
        if self.fixed:
            fmap.add(fd, offset, length)
            return True
        bat, bitmaps = self.bat, self._bitmaps  # the pinned gate holds them still
        for block, inner, n in self.pieces(offset, length):
            entry = bat[block]
            bm = bitmaps.get(block, _NOT_LOADED)  # a bit is set only after its data landed
            if entry == V.BAT_FREE or bm is _NOT_LOADED:  # not loaded: the async path loads it
                return False
            if bm is not None and not all(isset for _s, _n, isset in V.runs(bm, inner, n)):
                return False  # a clear bit reads zeros, or the parent's data
            fmap.add(fd, entry * 512 + self._bm_bytes + inner, n)
        return True

    async def _bitmap(self, block: int) -> bytearray | None:
        if block in self._bitmaps:
            return self._bitmaps[block]
        raw = await self.file._pread(self.bat[block] * 512, self._bm_bytes)
        bm = None if V.all_set(raw, self._sectors) else bytearray(raw)
        return self._bitmaps.setdefault(block, bm)  # never replace a newer in-memory copy

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        if self.fixed:
            await self.file._pwrite(offset, data, fua)
            return
        if offset % 512 or len(data) % 512:
            offset, data = await self._widen(offset, data)
        mv = memoryview(data)
        pos, meta = 0, False
        for block, inner, n in self.pieces(offset, len(mv)):
            piece = mv[pos:pos + n]
            pos += n
            if not await self._write_in_place(block, inner, piece, fua):
                meta = await self._write_locked(block, inner, piece) or meta
        if meta and fua:
            await self._flush()

    async def _widen(self, offset: int, data: Buffer) -> tuple[int, bytearray]:
        """Grow an unaligned write to whole sectors with what they hold now."""
        start, end = offset // 512 * 512, -(-(offset + len(data)) // 512) * 512
        buf = bytearray(end - start)
        buf[:512] = await self._pread(start, 512)
        buf[-512:] = await self._pread(end - 512, 512)
        buf[offset - start:offset - start + len(data)] = data
        return start, buf

    async def _write_in_place(self, block: int, inner: int, piece: Buffer, fua: bool) -> bool:
        """Write without the lock when the block exists and every bit is already set."""
        await self._gate.enter()
        try:
            entry = self.bat[block]
            if entry == V.BAT_FREE:
                return False
            bm = await self._bitmap(block)
            if bm is not None and not all(b for _s, _n, b in V.runs(bm, inner, len(piece))):
                return False
            await self.file._pwrite(entry * 512 + self._bm_bytes + inner, piece, fua)
            return True
        finally:
            self._gate.leave()

    async def _write_locked(self, block: int, inner: int, piece: Buffer) -> bool:
        """Allocate if needed, write the data, then set the bits (§7: data first)."""
        async with self._lock:
            if self.bat[block] == V.BAT_FREE:
                if not self.is_diff and is_zero(piece):
                    return False  # an unallocated block of a base disk reads as zeros
                await self._allocate(block)
            await self._bitmap(block)  # loaded before _mark changes it
            where = self.bat[block] * 512 + self._bm_bytes
            await self.file._pwrite(where + inner, piece, False)
            return self._mark(block, inner, len(piece))

    async def _allocate(self, block: int) -> None:
        pos = -(-self._footer_pos // 512) * 512
        end = pos + self.stride
        await self.file._pwrite(end, self.footer.pack(), False)  # §7: EOF keeps a footer
        self._footer_pos = end
        self._bitmaps[block] = bytearray(self._bm_bytes)
        self._dirty_bitmaps.add(block)
        self.bat[block] = pos // 512
        self._dirty_bat.add(block // V.BAT_SECTOR_ENTRIES)

    def _mark(self, block: int, inner: int, n: int) -> bool:
        """Set the bits of the sectors written; True when the bitmap changed."""
        bm = self._bitmaps.get(block)
        if bm is None:
            return False
        V.set_bits(bm, inner // 512, -(-(inner + n) // 512) - inner // 512)
        if V.all_set(bm, self._sectors):
            self._bitmaps[block] = None
        self._dirty_bitmaps.add(block)
        return True

    # ---- zero, trim, extents --------------------------------------------------------
    async def _zero(self, offset: int, length: int, may_trim: bool, fast: bool,
                    fua: bool) -> None:
        if self.fixed:
            await self.file._zero(offset, length, may_trim, fast, fua)
            return
        if offset % 512 or length % 512 or self.is_diff:
            await self.write_zeroes_slowly(offset, length, fua)  # sets bits: masks a parent
            return
        for block, inner, n in self.pieces(offset, length):
            await self._in_block(block, inner, n, zero=True)
        if fua:
            await self._flush()

    async def _trim(self, offset: int, length: int, fua: bool) -> None:
        if self.fixed:
            await self.file._trim(offset, length, fua)
            return
        for block, inner, n in self.pieces(offset, length):
            first, last = -(-inner // 512) * 512, (inner + n) // 512 * 512
            if last > first:
                await self._in_block(block, first, last - first, zero=False)
        if fua:
            await self._flush()

    async def _in_block(self, block: int, inner: int, n: int, zero: bool) -> None:
        await self._gate.enter()
        try:
            entry = self.bat[block]
            if entry == V.BAT_FREE:
                return
            where = entry * 512 + self._bm_bytes + inner
            if zero:
                await self.file._zero(where, n, True, False, False)
            else:
                await self.file._trim(where, n, False)
        finally:
            self._gate.leave()

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        if self.fixed:
            return await self.file._extents(offset, length)
        hole = HOLE if self.is_diff else HOLE | ZERO
        out: list[Extent] = []
        for count, (block, inner, n) in enumerate(self.pieces(offset, length)):
            if count >= 65536:
                break
            for run_len, flags in await self._block_extents(block, inner, n, hole):
                if out and out[-1].flags == flags:
                    out[-1] = Extent(out[-1].length + run_len, flags)
                else:
                    out.append(Extent(run_len, flags))
        return out

    async def _block_extents(self, block: int, inner: int, n: int,
                             hole: int) -> list[tuple[int, int]]:
        await self._gate.enter()
        try:
            if self.bat[block] == V.BAT_FREE:
                return [(n, hole)]
            bm = await self._bitmap(block)
            if bm is None:
                return [(n, 0)]
            return [(count, 0 if isset else hole) for _s, count, isset in V.runs(bm, inner, n)]
        finally:
            self._gate.leave()

    # ---- metadata write-back -------------------------------------------------------
    def _meta_dirty(self) -> bool:
        return bool(self._dirty_bitmaps or self._dirty_bat)

    async def _publish(self, final: bool = False) -> None:
        if self._meta_dirty():
            await run_blocking(self._publish_sync)
        else:
            await self.file._flush()

    def _publish_sync(self) -> None:
        """§7: data, then bitmaps, then BAT entries, each step synced."""
        fd = self.file.fd
        os.fdatasync(fd)
        full = b"\xff" * self._bm_bytes
        for block in sorted(self._dirty_bitmaps):
            if self.bat[block] != V.BAT_FREE:
                bm = self._bitmaps.get(block)
                os.pwrite(fd, full if bm is None else bm, self.bat[block] * 512)
        self._dirty_bitmaps = set()
        if self._dirty_bat:
            os.fdatasync(fd)
            self._write_bat_sync(self._dirty_bat)
            self._dirty_bat = set()
        os.fdatasync(fd)

    def _write_bat_sync(self, sectors: set[int]) -> None:
        assert self.dyn is not None
        for sector in sorted(sectors):
            first = sector * V.BAT_SECTOR_ENTRIES
            os.pwrite(self.file.fd, V.bat_dump(self.bat[first:first + V.BAT_SECTOR_ENTRIES]),
                      self.dyn.table_offset + 4 * first)

    # ---- maintenance: vhd_maint.py -----------------------------------------------------
    def _read_sync(self, length: int, offset: int) -> bytes:
        return os.pread(self.file.fd, length, offset)

    def _set_entry(self, block: int, value: int) -> None:
        self.bat[block] = value
        self._dirty_bat.add(block // V.BAT_SECTOR_ENTRIES)

    def info(self) -> ImageInfo:
        return vhd_maint.info(self)

    def check(self, repair: bool = False) -> CheckReport:
        return vhd_maint.check(self, repair)

    async def compact(self, progress: Progress | None = None) -> int:
        return await vhd_maint.compact(self, progress)

    async def resize(self, new_size: int, force: bool = False) -> None:
        await vhd_maint.resize(self, new_size, force)


def _write_new_image(fd: int, footer: V.Footer, size: int, block_size: int) -> None:
    """Fixed: data + footer.  Dynamic: footer copy, header, BAT, footer (§3.3 layout)."""
    if footer.disk_type == V.FIXED:
        preallocate(fd, 0, size)
        os.pwrite(fd, footer.pack(), size)
    else:
        dyn = V.new_dyn_header(size, block_size)
        raw = footer.pack()
        os.pwrite(fd, raw, 0)
        os.pwrite(fd, dyn.pack(), 512)
        os.pwrite(fd, b"\xff" * dyn.bat_bytes, dyn.table_offset)
        os.pwrite(fd, raw, dyn.table_offset + dyn.bat_bytes)


def _create_problem(size: int, variant: str, block_size: int, opts: dict[str, Any]) -> str | None:
    if variant not in ("dynamic", "fixed"):
        return f"VHD has no variant {variant!r} (dynamic, fixed)"
    if opts:
        return f"unknown VHD option(s): {', '.join(opts)}"
    if block_size < 512 or block_size > V.MAX_BLOCK_SIZE or block_size & (block_size - 1):
        return f"VHD block size must be a power of two from 512 to 256M, not {block_size}"
    if size <= 0:
        return f"cannot make a VHD of {size} bytes"
    if size > V.MAX_SIZE:  # §3.4
        return f"VHD disks are limited to 2040 GiB, not {size} bytes"
    return None

