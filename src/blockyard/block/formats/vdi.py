"""VDI 1.1 driver: normal (dynamic), fixed, and differencing images (image-formats.md §1).

Data path.  Reads and writes of allocated blocks go straight to the file
through ``RawFile`` (inline for small requests, the I/O pool for large ones).
Everything that changes metadata -- allocating, freeing, publishing, moving
blocks -- runs under one ``asyncio.Lock`` per image.

Crash safety (§7).  The block map and header are written back lazily: an
allocation appends the whole block (the rest zero-filled, or parent data for
a differencing image: ``_fill_for_partial``) and changes the map in memory
only.  ``flush`` (and a FUA write that allocated) then does fdatasync ->
write map sectors + header -> fdatasync, so a map entry never reaches the
disk before its data.  A crash loses unflushed allocations and leaves their
blocks as unreferenced slots past the map, which the next read-write open
reclaims.

Dirty detection.  VirtualBox keeps no "open" flag in a VDI, and we add none
(the header is VirtualBox's).  An unclean close is recognised by its traces
instead: a blocks-allocated counter that disagrees with the map, slots no map
entry uses, or bytes past the last slot.  ``info().dirty`` is True when the
image showed such traces at open; a read-write open repairs them (the
repairs are the safe ones ``check(repair=True)`` makes).  The modification
UUID is renewed on the first metadata update after open, as VirtualBox does.

Zero and trim.  A whole-block trim or zero sets the zero marker
(0xFFFFFFFE).  VirtualBox keeps the counter equal to the number of
referenced slots and the slots dense (its discard moves the last block into
the freed slot and shrinks the file, VDI.cpp ``vdiDiscardBlockAsync``), and
``qemu-img check`` flags any other state, so a freed slot is reused by the
next allocation, and at each flush up to ``MOVES_PER_FLUSH`` blocks from the
end of the file are moved into the remaining freed slots and the file is
truncated.  A freed slot is reused only after the map that frees it is
durable.  Fixed images keep their map: zero writes zeroes, trim punches.

Differencing images (type 4) open; ``parent`` is the hook a chain layer sets.
Without a parent, reading an unallocated block raises EIO.
"""

from __future__ import annotations

import os
import uuid
from array import array
from typing import Any, TypeVar

from blockyard.block.formats import vdi_layout as L
from blockyard.block.formats import vdi_maint
from blockyard.block.formats.base import CheckReport, ImageInfo, Progress
from blockyard.block.formats.vdi_vhd_common import (
    MappedImage,
    is_zero,
    plan_moves,
    preallocate,
    zeros,
)
from blockyard.block.layer import HOLE, ZERO, Buffer, Extent, FileMap
from blockyard.block.raw import RawFile
from blockyard.errors import MediaError
from blockyard.util.aio import run_blocking

MOVES_PER_FLUSH = 64
T = TypeVar("T")
class VdiImage(MappedImage):
    format_name = "vdi"

    def __init__(self, path: str, file: RawFile, header: L.VdiHeader, bmap: array[int],
                 scan: L.MapScan) -> None:
        super().__init__()
        self._setup(path, file)
        self._load_state(header, bmap, scan)

    def _load_state(self, header: L.VdiHeader, bmap: array[int], scan: L.MapScan) -> None:
        self.h = header
        self.bmap = bmap
        self.block_size = header.block_size
        self.size = header.disk_size // 512 * 512  # §1.2: VirtualBox rounds odd sizes down
        self.is_diff = header.image_type == L.TYPE_DIFF
        self.fixed = header.image_type == L.TYPE_FIXED
        self._next_slot = max(scan.end_slot, header.blocks_allocated)
        self._holes = list(scan.holes)  # free slots below _next_slot whose freeing is on disk
        self._pending: list[int] = []  # slots freed in memory only
        self._dirty_sectors: set[int] = set()
        self._header_dirty = False
        self._renewed = False

    # ---- open / create ---------------------------------------------------------
    @staticmethod
    def probe(head: bytes, size: int) -> bool:
        return len(head) >= L.PRE_SIZE and head[0x40:0x44] == b"\x7f\x10\xda\xbe"

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> VdiImage:
        p, file, (header, bmap, scan) = cls.open_file(path, read_only, L.read_image)
        img = cls(p, file, header, bmap, scan)
        img.dirty = L.unclean(header, scan)
        if img.dirty and not read_only:
            try:
                img._squeeze_sync(None)  # the safe repairs: counter, unused slots, tail
            except OSError as exc:
                os.close(file.fd)
                raise MediaError(f"{p}: cannot repair after an unclean close: "
                                 f"{exc.strerror}") from None
        return img

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int, *, variant: str = "dynamic",
               **opts: Any) -> VdiImage:
        block_size = int(opts.pop("block_size", L.DEFAULT_BLOCK_SIZE))
        problem = _create_problem(size, variant, block_size, opts)
        if problem:
            raise MediaError(f"{os.fspath(path)}: {problem}")
        h = L.new_header(-(-size // 512) * 512, block_size, variant == "fixed")
        bmap = array("I", range(h.blocks_total) if h.image_type == L.TYPE_FIXED
                     else [L.BLOCK_FREE] * h.blocks_total)

        def write(fd: int) -> None:
            os.ftruncate(fd, h.offset_data)
            L.write_header(fd, h)
            os.pwrite(fd, L.dump_map(bmap), h.offset_blocks)
            if h.image_type == L.TYPE_FIXED:
                preallocate(fd, h.offset_data, h.blocks_total * h.stride)

        return cls.open(cls.new_file(path, write))

    # ---- data path ---------------------------------------------------------------
    def _where(self, block: int) -> int | None:
        slot = self.bmap[block]
        return None if slot >= L.BLOCK_ZERO else self.h.slot_offset(slot)

    async def _read_piece(self, block: int, inner: int, n: int) -> Buffer:
        await self._gate.enter()
        try:
            where = self._where(block)
            if where is not None:
                return await self.file._pread(where + inner, n)
        finally:
            self._gate.leave()
        if self.is_diff and self.bmap[block] == L.BLOCK_FREE:  # §1.3: diff reads the parent
            return await self._read_parent(block * self.block_size + inner, n)
        return bytes(n)

    def _map_into(self, fmap: FileMap, offset: int, length: int) -> bool:
        bmap, h, fd = self.bmap, self.h, self.file.fd  # the pinned gate holds them still
        for block, inner, n in self.pieces(offset, length):
            slot = bmap[block]
            if slot >= L.BLOCK_ZERO:  # zero, or free (zeros, or the parent's data)
                return False
            fmap.add(fd, h.slot_offset(slot) + inner, n)
        return True

    async def _touch(self) -> None:
        """§1.2: a new modification UUID on the first change after open, written before
        the change, so a child made on this image can tell it has changed since."""
        async with self._lock:
            if not self._renewed:
                self.h.uuid_modification = uuid.uuid4()
                self._renewed = True
                await run_blocking(L.write_header, self.file.fd, self.h)

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        if not self._renewed:
            await self._touch()
        mv = memoryview(data)
        pos = 0
        allocated = False
        for block, inner, n in self.pieces(offset, len(mv)):
            piece = mv[pos:pos + n]
            pos += n
            if not await self._write_in_place(block, inner, piece, fua):
                await self._write_new(block, inner, piece)
                allocated = True
        if allocated and fua:
            await self._flush()

    async def _write_in_place(self, block: int, inner: int, piece: Buffer, fua: bool) -> bool:
        await self._gate.enter()
        try:
            where = self._where(block)
            if where is None:
                return False
            await self.file._pwrite(where + inner, piece, fua)
            return True
        finally:
            self._gate.leave()

    async def _write_new(self, block: int, inner: int, piece: Buffer) -> None:
        """Allocate ``block`` and write it whole, once (§1.3, §7 step 1)."""
        async with self._lock:
            where = self._where(block)
            if where is not None:  # another request allocated it while we waited
                await self.file._pwrite(where + inner, piece, False)
                return
            bs = self.block_size
            if len(piece) == bs and is_zero(piece):  # §1.3: a zero block needs no slot
                if self.is_diff:
                    self._set_entry(block, L.BLOCK_ZERO)
                return
            buf: Buffer = piece
            if len(piece) != bs:
                buf = bytearray(await self._fill_for_partial(block))
                buf[inner:inner + len(piece)] = piece
            slot = await self._take_slot()
            try:
                await self.file._pwrite(self.h.slot_offset(slot), buf, False)
            except BaseException:
                self._holes.insert(0, slot)
                raise
            self._set_entry(block, slot)

    async def _fill_for_partial(self, block: int) -> Buffer:
        """What a newly allocated block holds before the write lands in it.

        Zeros for a base image or a zero-marked block; a differencing image's
        free block starts from the parent's data (§1.3, VirtualBox's copy-up).
        """
        if self.is_diff and self.bmap[block] == L.BLOCK_FREE:
            return await self._read_parent(block * self.block_size, self.block_size)
        return zeros(self.block_size)

    async def _take_slot(self) -> int:
        """Lowest durable hole, else the append slot (§1.3); the lock is held."""
        if not self._holes and self._next_slot >= self.h.blocks_total and self._pending:
            await self._publish()  # slots must stay < blocks total: make freed ones reusable
        if self._holes:
            self._holes.sort()
            return self._holes.pop(0)
        slot = self._next_slot
        self._next_slot += 1
        self.h.blocks_allocated = self._next_slot
        self._header_dirty = True
        return slot

    def _set_entry(self, block: int, value: int) -> None:
        self.bmap[block] = value
        self._dirty_sectors.add(block // L.MAP_SECTOR_ENTRIES)

    # ---- zero, trim, extents --------------------------------------------------------
    async def _zero(self, offset: int, length: int, may_trim: bool, fast: bool,
                    fua: bool) -> None:
        if not self._renewed:
            await self._touch()
        await self._discard(offset, length, True)
        if fua:
            await self._flush()

    async def _trim(self, offset: int, length: int, fua: bool) -> None:
        if not self._renewed:
            await self._touch()
        await self._discard(offset, length, False)
        if fua:
            await self._flush()

    async def _discard(self, offset: int, length: int, zero: bool) -> None:
        whole: list[int] = []
        for block, inner, n in self.pieces(offset, length):
            if not self.fixed and inner == 0 and (n == self.block_size or n == self.size
                                                  - block * self.block_size):
                whole.append(block)
            else:
                await self._discard_piece(block, inner, n, zero)
        if whole:
            await self._free_blocks(whole)

    async def _discard_piece(self, block: int, inner: int, n: int, zero: bool) -> None:
        await self._gate.enter()
        try:
            where = self._where(block)
            if where is not None:
                if zero:
                    await self.file._zero(where + inner, n, True, False, False)
                else:
                    await self.file._trim(where + inner, n, False)
                return
        finally:
            self._gate.leave()
        if zero and self.is_diff and self.bmap[block] == L.BLOCK_FREE:
            await self._write_new(block, inner, memoryview(bytes(n)))

    async def _free_blocks(self, blocks: list[int]) -> None:
        """Whole blocks become zero-marked; their slots wait for the next flush (§1.3)."""
        async with self._lock, self._gate.exclusive():
            for block in blocks:
                slot = self.bmap[block]
                if slot < L.BLOCK_ZERO:
                    self._pending.append(slot)
                    self._punch(self.h.slot_offset(slot), self.block_size)
                if slot != L.BLOCK_ZERO and (slot < L.BLOCK_ZERO or self.is_diff):
                    self._set_entry(block, L.BLOCK_ZERO)

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        for count, (block, _inner, n) in enumerate(self.pieces(offset, length)):
            if count >= 65536:  # a layer may answer fewer bytes than asked
                break
            slot = self.bmap[block]
            flags = 0 if slot < L.BLOCK_ZERO else HOLE | ZERO
            if slot == L.BLOCK_FREE and self.is_diff:
                flags = HOLE  # the parent decides what it reads as
            if out and out[-1].flags == flags:
                out[-1] = Extent(out[-1].length + n, flags)
            else:
                out.append(Extent(n, flags))
        return out

    # ---- metadata write-back -------------------------------------------------------
    def _meta_dirty(self) -> bool:
        return bool(self._dirty_sectors or self._header_dirty or self._pending or self._holes)

    async def _publish(self, final: bool = False) -> None:
        """§7: data synced, then map + header, then synced; then squeeze freed slots.

        A flush moves at most ``MOVES_PER_FLUSH`` blocks (bounded latency); the
        final publish at close moves them all, so a closed image is dense.
        """
        if not self._meta_dirty():
            await self.file._flush()
            return
        await run_blocking(self._publish_sync)
        if self._holes:
            async with self._gate.exclusive():
                await run_blocking(self._squeeze_sync, None if final else MOVES_PER_FLUSH)

    def _publish_sync(self) -> None:
        fd = self.file.fd
        os.fdatasync(fd)
        if not self._renewed:  # §1.2: a new modification UUID per session that writes
            self.h.uuid_modification = uuid.uuid4()
            self._renewed = self._header_dirty = True
        self._write_meta_sync()
        self._holes = sorted(self._holes + self._pending)
        self._pending = []

    def _write_meta_sync(self) -> None:
        fd = self.file.fd
        if self._dirty_sectors:
            L.write_map_sectors(fd, self.h, self.bmap, self._dirty_sectors)
            self._dirty_sectors = set()
        if self._header_dirty:
            L.write_header(fd, self.h)
            self._header_dirty = False
        os.fdatasync(fd)

    def _squeeze_sync(self, limit: int | None) -> None:
        """Move the last blocks into free slots, publish, truncate (gate closed, lock held)."""
        rev = {slot: blk for blk, slot in enumerate(self.bmap) if slot < L.BLOCK_ZERO}
        moves = plan_moves(list(rev), self._holes)[:limit]
        if moves:
            L.copy_slots(self.file.fd, self.h, moves)
            os.fdatasync(self.file.fd)  # the copies are durable before the map names them
            for src, dst in moves:
                block = rev.pop(src)
                rev[dst] = block
                self._set_entry(block, dst)
        used = {dst for _src, dst in moves}
        self._next_slot = max(rev, default=-1) + 1
        self._holes = [s for s in self._holes if s not in used and s < self._next_slot]
        self.h.blocks_allocated = self._next_slot
        self._header_dirty = True
        self._write_meta_sync()
        L.truncate_to(self.file.fd, self.h, self._next_slot)

    # ---- maintenance: vdi_maint.py -----------------------------------------------------
    def info(self) -> ImageInfo:
        info = vdi_maint.info(self)
        if self.is_diff:  # §1.4: a VDI names no parent file; blockyard's comment hint does
            from blockyard.block.formats.vdi_diff import hint_of

            info.parent_hint = hint_of(self.h.comment)
        return info

    def check(self, repair: bool = False) -> CheckReport:
        return vdi_maint.check(self, repair)

    async def compact(self, progress: Progress | None = None) -> int:
        return await vdi_maint.compact(self, progress)

    async def resize(self, new_size: int, force: bool = False) -> None:
        await vdi_maint.resize(self, new_size, force)


def _create_problem(size: int, variant: str, block_size: int, opts: dict[str, Any]) -> str | None:
    if variant not in ("dynamic", "fixed"):
        return f"VDI has no variant {variant!r} (dynamic, fixed)"
    if opts:
        return f"unknown VDI option(s): {', '.join(opts)}"
    if not L._pow2(block_size) or not 512 <= block_size <= L.MAX_BLOCK_SIZE:
        return f"VDI block size must be a power of two from 512 to 256M, not {block_size}"
    if size <= 0 or -(-size // block_size) > L.MAX_BLOCKS:
        return f"cannot make a VDI image of {size} bytes"
    return None


