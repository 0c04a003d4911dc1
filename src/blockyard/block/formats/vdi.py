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

import asyncio
import errno
import os
import uuid
from array import array
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

from blockyard.block.formats import vdi_layout as L
from blockyard.block.formats.base import CheckReport, ImageInfo, ImageLayer, Progress
from blockyard.block.layer import HOLE, ZERO, Buffer, Extent, Layer
from blockyard.block.raw import RawFile
from blockyard.errors import BlockError, MediaError
from blockyard.util import fallocate as fa
from blockyard.util.aio import run_blocking

MOVES_PER_FLUSH = 64
_ZEROS = bytes(1 << 20)


def is_zero(buf: Buffer) -> bool:
    n = len(buf)
    zeros = _ZEROS if n <= len(_ZEROS) else bytes(n)
    return bytes(buf) == zeros[:n] if isinstance(buf, memoryview) else buf == zeros[:n]


class IoGate:
    """Lock-free data I/O runs concurrently; ``exclusive()`` waits it out and holds it off.

    Block moves (squeeze, compact) and slot frees use it so that no read or
    write is in flight on a slot whose meaning changes.
    """

    def __init__(self) -> None:
        self.busy = 0
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def enter(self) -> None:
        while not self._open.is_set():
            await self._open.wait()
        self.busy += 1
        self._idle.clear()

    def leave(self) -> None:
        self.busy -= 1
        if not self.busy:
            self._idle.set()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        while not self._open.is_set():  # another exclusive holder
            await self._open.wait()
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._open.set()


class MappedImage(ImageLayer):
    """What the block-mapped drivers share (VDI here, VHD in vhd.py)."""

    block_size: int
    parent: Layer | None = None  # differencing hook: a chain layer attaches the parent
    is_diff = False
    dirty = False

    def _setup(self, path: str, file: RawFile) -> None:
        self.path = path
        self.file = file
        self.read_only = file.read_only
        self._lock = asyncio.Lock()
        self._gate = IoGate()

    @property
    def can_flush(self) -> bool:
        return True

    @property
    def can_fua(self) -> bool:
        return True

    @property
    def can_trim(self) -> bool:
        return not self.read_only

    @property
    def can_multi_conn(self) -> bool:
        return True

    @property
    def can_extents(self) -> bool:
        return True

    def pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int]]:
        """Split a request into (block, offset in block, length) pieces."""
        bs = self.block_size
        end = offset + length
        while offset < end:
            block, inner = divmod(offset, bs)
            n = min(bs - inner, end - offset)
            yield block, inner, n
            offset += n

    async def _read_parent(self, offset: int, length: int) -> Buffer:
        if self.parent is None:
            raise BlockError(errno.EIO, f"{self.path}: differencing image has no parent attached")
        end = min(offset + length, self.parent.size)
        data = await self.parent.pread(offset, max(0, end - offset)) if end > offset else b""
        return data if len(data) == length else bytes(data) + bytes(length - len(data))

    async def _flush(self) -> None:
        async with self._lock:
            await self._publish()

    async def _publish(self) -> None:
        raise NotImplementedError

    async def _cache(self, offset: int, length: int) -> None:
        return None

    async def _close(self) -> None:
        if self.file.fd < 0:
            return
        try:
            if not self.read_only:
                await self._flush()
        finally:
            await self.file.close()

    def _close_now(self) -> None:
        if self.file.fd >= 0:
            os.close(self.file.fd)
            self.file.fd = -1

    def _allocated_bytes(self) -> int:
        return os.fstat(self.file.fd).st_blocks * 512


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
        p = os.fspath(path)
        file = RawFile(p, read_only=read_only)
        try:
            header, bmap, scan = L.read_image(file.fd, p)
        except BaseException:
            os.close(file.fd)
            raise
        img = cls(p, file, header, bmap, scan)
        img.dirty = L.unclean(header, scan)
        if img.dirty and not read_only:
            img._squeeze_sync(None)  # the safe repairs: counter, unused slots, tail
        return img

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int, *, variant: str = "dynamic",
               **opts: Any) -> VdiImage:
        p = os.fspath(path)
        block_size = int(opts.pop("block_size", L.DEFAULT_BLOCK_SIZE))
        problem = _create_problem(size, variant, block_size, opts)
        if problem:
            raise MediaError(f"{p}: {problem}")
        h = L.new_header(-(-size // 512) * 512, block_size, variant == "fixed")
        bmap = array("I", range(h.blocks_total) if h.image_type == L.TYPE_FIXED
                     else [L.BLOCK_FREE] * h.blocks_total)
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            raise MediaError(f"{p}: already exists") from None
        except OSError as exc:
            raise MediaError(f"{p}: cannot create: {exc.strerror}") from None
        try:
            os.ftruncate(fd, h.offset_data)
            L.write_header(fd, h)
            os.pwrite(fd, L.dump_map(bmap), h.offset_blocks)
            if h.image_type == L.TYPE_FIXED:
                _preallocate(fd, h.offset_data, h.blocks_total * h.stride)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            os.unlink(p)
            raise MediaError(f"{p}: cannot create: {exc.strerror}") from None
        os.close(fd)
        return cls.open(p)

    # ---- data path ---------------------------------------------------------------
    def _where(self, block: int) -> int | None:
        slot = self.bmap[block]
        return None if slot >= L.BLOCK_ZERO else self.h.slot_offset(slot)

    async def _pread(self, offset: int, length: int) -> Buffer:
        bs = self.block_size
        if offset % bs + length <= bs:
            return await self._read_piece(offset // bs, offset % bs, length)
        out = bytearray(length)
        pos = 0
        for block, inner, n in self.pieces(offset, length):
            out[pos:pos + n] = await self._read_piece(block, inner, n)
            pos += n
        return out

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

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
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
        return _ZEROS[:self.block_size] if self.block_size <= len(_ZEROS) else bytes(
            self.block_size)

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
        await self._discard(offset, length, True)
        if fua:
            await self._flush()

    async def _trim(self, offset: int, length: int, fua: bool) -> None:
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

    def _punch(self, offset: int, length: int) -> None:
        try:
            fa.punch_hole(self.file.fd, offset, length)
        except OSError:
            pass  # space is reclaimed by the move at the next flush anyway

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

    async def _publish(self) -> None:
        """§7: data synced, then map + header, then synced; then squeeze freed slots."""
        if not self._meta_dirty():
            await self.file._flush()
            return
        await run_blocking(self._publish_sync)
        if self._holes:
            async with self._gate.exclusive():
                await run_blocking(self._squeeze_sync, MOVES_PER_FLUSH)

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
        moves = L.plan_moves(list(rev), self._holes)[:limit]
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

    # ---- maintenance ------------------------------------------------------------------
    def info(self) -> ImageInfo:
        h = self.h
        link = h.uuid_link if h.uuid_link != L.NULL_UUID else None
        return ImageInfo(
            self.path, "vdi", L.TYPE_NAMES[h.image_type], self.size, self._allocated_bytes(),
            uuid=str(h.uuid_image), modification_uuid=str(h.uuid_modification),
            parent_uuid=str(link) if link else None, geometry=self._geometry(),
            block_size=h.block_size, dirty=self.dirty,
            extra={"header_size": h.header_size, "blocks_total": h.blocks_total,
                   "blocks_allocated": self._next_slot, "block_extra": h.block_extra,
                   "parent_modification_uuid": str(h.uuid_parent_modification) if link else None,
                   "comment": h.comment.split(b"\0", 1)[0].decode("utf-8", "replace")})

    def _geometry(self) -> tuple[int, int, int]:
        lchs = self.h.lchs
        if lchs and lchs["cylinders"] and lchs["heads"] and lchs["sectors"]:
            return lchs["cylinders"], lchs["heads"], lchs["sectors"]
        return min(16383, self.size // 512 // (16 * 63)), 16, 63  # §6.1 default

    def check(self, repair: bool = False) -> CheckReport:
        """Scan header and map as they are on disk (unflushed metadata is published first)."""
        if not self.read_only and self._meta_dirty():
            self._publish_sync()
        report = CheckReport(self.path)
        found = self._findings(report)
        if not found or not repair:
            return report
        if self.read_only:
            report.errors.append("opened read-only: nothing repaired")
            return report
        self._squeeze_sync(None)  # fixes the counter, fills unused slots, drops the tail
        after = CheckReport(self.path)
        self._findings(after)
        report.errors, report.leaks = after.errors, after.leaks
        report.repaired = [f for f in found if f not in after.errors + after.leaks]
        return report

    def _findings(self, report: CheckReport) -> list[str]:
        try:
            h, bmap, scan = L.read_image(self.file.fd, self.path)
        except MediaError as exc:
            report.errors.append(str(exc))
            return []
        if scan.referenced != h.blocks_allocated and not self.fixed:  # as qemu-img check
            report.errors.append(f"blocks-allocated counter is {h.blocks_allocated}, "
                                 f"the map references {scan.referenced} blocks")
        if scan.holes:
            report.leaks.append(f"{len(scan.holes)} block slot(s) in the file used by no block")
        if scan.tail_bytes:
            report.leaks.append(f"{scan.tail_bytes} bytes past the last block slot")
        self._load_state(h, bmap, scan)
        return report.errors + report.leaks

    async def compact(self, progress: Progress | None = None) -> int:
        """Free every all-zero block, then move blocks down and truncate (§1.3)."""
        if self.read_only or self.fixed:
            kind = "read-only" if self.read_only else "fixed"
            raise MediaError(f"{self.path}: cannot compact a {kind} VDI image")
        before = self._allocated_bytes()
        total = self.h.blocks_total
        for block in range(total):
            if self.bmap[block] < L.BLOCK_ZERO:
                await self._drop_if_zero(block)
            if progress:
                progress(block + 1, total)
        async with self._lock:
            await run_blocking(self._publish_sync)
            async with self._gate.exclusive():
                await run_blocking(self._squeeze_sync, None)
        return max(0, before - self._allocated_bytes())

    async def _drop_if_zero(self, block: int) -> None:
        async with self._lock, self._gate.exclusive():
            where = self._where(block)
            if where is None or not is_zero(await self.file._pread(where, self.block_size)):
                return
            self._pending.append(self.bmap[block])
            self._set_entry(block, L.BLOCK_ZERO if self.is_diff else L.BLOCK_FREE)
            self._punch(where, self.block_size)

    async def resize(self, new_size: int, force: bool = False) -> None:
        if self.read_only or self.fixed or self.is_diff:
            kind = "read-only" if self.read_only else L.TYPE_NAMES[self.h.image_type]
            raise MediaError(f"{self.path}: cannot resize a {kind} VDI image")
        new_size = -(-new_size // 512) * 512
        total = -(-new_size // self.block_size)
        if new_size <= 0 or total > L.MAX_BLOCKS:
            raise MediaError(f"{self.path}: cannot resize a VDI image to {new_size} bytes")
        async with self._lock, self._gate.exclusive():
            await run_blocking(self._resize_sync, new_size, total, force)

    def _resize_sync(self, new_size: int, total: int, force: bool) -> None:
        h = self.h
        dropped = [b for b in range(total, h.blocks_total) if self.bmap[b] < L.BLOCK_ZERO]
        if dropped and not force:
            raise MediaError(f"{self.path}: shrinking to {new_size} bytes drops "
                             f"{len(dropped)} allocated block(s); use force")
        self._zero_past(min(new_size, self.size))
        self._publish_sync()
        if total > (h.offset_data - h.offset_blocks) // 4:
            self._move_map_sync(total)
        self._pending += [self.bmap[b] for b in dropped]
        if total < h.blocks_total:
            del self.bmap[total:]
        grown = range(h.blocks_total, total)
        self.bmap.extend([L.BLOCK_FREE] * len(grown))
        self._dirty_sectors |= {b // L.MAP_SECTOR_ENTRIES for b in grown}
        self._write_meta_sync()  # new entries read "free" before the header counts them
        h.disk_size, h.blocks_total = new_size, total
        self._header_dirty = True
        self._publish_sync()
        self._squeeze_sync(None)
        self.size = new_size

    def _zero_past(self, size: int) -> None:
        """Zero the rest of the block holding ``size`` so a later grow reads zeros."""
        block, inner = divmod(size, self.block_size)
        if inner and block < len(self.bmap) and self.bmap[block] < L.BLOCK_ZERO:
            n = self.block_size - inner
            os.pwrite(self.file.fd, bytes(n), self.h.slot_offset(self.bmap[block]) + inner)

    def _move_map_sync(self, total: int) -> None:
        """Make room for a longer map: move it into the first data slots (crash safe).

        The first k slots are copied to the end and published (old layout), the
        new map is written into the space they left, and one header write
        switches to the new layout: offset_data grows by k slots, slot numbers
        shrink by k.
        """
        h = self.h
        self._squeeze_sync(None)
        k = -(-4 * total // h.stride)
        n = self._next_slot
        moves = [(s, max(n, k) + s) for s in range(min(k, n))]
        rev = {slot: blk for blk, slot in enumerate(self.bmap) if slot < L.BLOCK_ZERO}
        L.copy_slots(self.file.fd, h, moves)
        os.fdatasync(self.file.fd)
        for src, dst in moves:
            self._set_entry(rev[src], dst)
        self._next_slot = h.blocks_allocated = max(n, k) + min(k, n)
        self._header_dirty = True
        self._write_meta_sync()  # old layout again, slots 0..k-1 unused
        h.offset_blocks, h.offset_data = h.offset_data, h.offset_data + k * h.stride
        self.bmap = array("I", (s - k if s < L.BLOCK_ZERO else s for s in self.bmap))
        self._next_slot = h.blocks_allocated = self._next_slot - k
        self._dirty_sectors = set(range(-(-len(self.bmap) // L.MAP_SECTOR_ENTRIES)))
        self._write_meta_sync()  # the header write switches layouts


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


def _preallocate(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, offset + length)
