"""Writing streamOptimized VMDKs in VMware's layout (image-formats.md §2.4).

The file is written once, front to back::

    header (GD_AT_END) | descriptor | grains: marker + zlib, sector padded |
    GT marker + GT ... | GD marker + GD | footer marker | footer | EOS marker

The footer is the header again with the real GD offset; qemu, VirtualBox
and VMware find it at EOF - 1024.  A grain is compressed and appended when
it has been written completely (or zeroed whole); partly written grains wait
in memory and are sealed, zero-filled, at close.  All-zero grains are left
out (GTE 0).  A grain already sealed cannot change: writing it again fails
with EPERM -- the format has no room for rewrites.  ``flush`` makes the
grains written so far durable, but the image is complete (readable by
anyone) only after ``close``.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from array import array
from typing import Any

from blockyard.block.formats import vmdk_descriptor as vd
from blockyard.block.formats.base import ImageLayer
from blockyard.block.formats.vmdk_create import sparse_header, write_sparse_file
from blockyard.block.formats.vmdk_extent import SECTOR, VmdkExtent, merge
from blockyard.block.formats.vmdk_layout import (
    GD_AT_END,
    MARKER_EOS,
    MARKER_FOOTER,
    MARKER_GD,
    MARKER_GT,
    SparseHeader,
)
from blockyard.block.layer import HOLE, ZERO, Buffer, Extent
from blockyard.block.raw import RawFile
from blockyard.errors import BlockError
from blockyard.util.aio import run_blocking

META_MARKER = struct.Struct("<QII")  # sectors of metadata that follow, 0, type
GRAIN_MARKER = struct.Struct("<QI")  # LBA, compressed size
EMPTY = -1  # a grain zeroed whole: never written, GTE 0


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % SECTOR)


def _marker(sectors: int, kind: int) -> bytes:
    return META_MARKER.pack(sectors, 0, kind) + bytes(SECTOR - META_MARKER.size)


class StreamWriter(VmdkExtent):
    kind = "SPARSE"
    has_metadata = True

    def __init__(self, raw: RawFile, header: SparseHeader, size: int) -> None:
        super().__init__(size)
        self.raw = raw
        self.path = raw.path
        self.h = header
        self.grain = header.grain_size * SECTOR
        self.gte: dict[int, int] = {}  # grain -> marker sector, or EMPTY
        self.pending: dict[int, tuple[bytearray, list[tuple[int, int]]]] = {}
        self.next = header.overhead * SECTOR
        self.closed = False

    def _grain_len(self, g: int) -> int:
        return min(self.grain, self.size - g * self.grain)

    # ---- reads see what has been written so far --------------------------------------
    async def read(self, off: int, length: int) -> Buffer:
        out = bytearray(length)
        pos = 0
        while pos < length:
            g, within = divmod(off + pos, self.grain)
            n = min(self.grain - within, length - pos)
            data = await self._grain_bytes(g)
            if data is not None:
                out[pos:pos + n] = data[within:within + n]
            pos += n
        return out

    async def _grain_bytes(self, g: int) -> Buffer | None:
        if g in self.pending:
            return self.pending[g][0]
        v = self.gte.get(g, EMPTY)
        if v == EMPTY:
            return None
        assert self.raw is not None
        _lba, size = GRAIN_MARKER.unpack(bytes(await self.raw._pread(v * SECTOR, 12)))
        comp = await self.raw._pread(v * SECTOR + 12, size)
        return zlib.decompress(comp)

    async def extents(self, off: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        pos = steps = 0
        while pos < length and steps < 1 << 16:  # a shorter answer is allowed
            steps += 1
            g, within = divmod(off + pos, self.grain)
            n = min(self.grain - within, length - pos)
            written = g in self.pending or self.gte.get(g, EMPTY) != EMPTY
            merge(out, n, 0 if written else HOLE | ZERO)
            pos += n
        return out

    # ---- writes fill grains; a complete grain is sealed ----------------------------------
    async def write(self, off: int, data: Buffer) -> None:
        mv = memoryview(data).cast("B")
        pos = 0
        while pos < len(mv):
            g, within = divmod(off + pos, self.grain)
            n = min(self.grain - within, len(mv) - pos)
            await self._fill(g, within, mv[pos:pos + n])
            pos += n

    async def zero(self, off: int, length: int, may_trim: bool) -> None:
        pos = 0
        while pos < length:
            g, within = divmod(off + pos, self.grain)
            n = min(self.grain - within, length - pos)
            if n == self._grain_len(g) and g not in self.gte:
                self.pending.pop(g, None)
                self.gte[g] = EMPTY
            else:
                await self._fill(g, within, memoryview(bytes(n)))
            pos += n

    async def _fill(self, g: int, within: int, chunk: memoryview) -> None:
        if g in self.gte:
            raise BlockError(errno.EPERM, f"{self.path}: streamOptimized grain {g} is already "
                             "written; stream images are written once, front to back")
        full = self._grain_len(g)
        if within == 0 and len(chunk) == full:
            await self._seal(g, chunk)
            return
        buf, spans = self.pending.setdefault(g, (bytearray(full), []))
        buf[within:within + len(chunk)] = chunk
        spans.append((within, within + len(chunk)))
        spans.sort()
        merged = [spans[0]]
        for a, b in spans[1:]:
            if a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        self.pending[g] = (buf, merged)
        if merged == [(0, full)]:
            del self.pending[g]
            await self._seal(g, memoryview(buf))

    async def _seal(self, g: int, data: memoryview) -> None:
        if not any(data):
            self.gte[g] = EMPTY
            return
        comp = await run_blocking(zlib.compress, bytes(data), 6)
        record = _pad(GRAIN_MARKER.pack(g * self.h.grain_size, len(comp)) + comp)
        assert self.raw is not None
        at = self.next
        self.next += len(record)
        self.gte[g] = at // SECTOR
        await self.raw._pwrite(at, record, False)

    # ---- the tail: tables, footer, end of stream ---------------------------------------------
    async def close(self) -> None:
        if self.closed or self.raw is None:
            return
        for g in sorted(self.pending):
            buf, _spans = self.pending.pop(g)
            await self._seal(g, memoryview(buf))
        tail = self._tail()
        await self.raw._pwrite(self.next, tail, False)
        try:
            os.ftruncate(self.raw.fd, self.next + len(tail))
        except OSError as exc:
            raise BlockError(exc.errno or errno.EIO, f"{self.path}: {exc.strerror}") from None
        await self.raw._flush()
        self.closed = True
        await self.raw._close()

    def _tail(self) -> bytes:
        n, h = self.h.num_gtes_per_gt, self.h
        gd = array("I", bytes(4 * h.gd_entries))
        out = bytearray()
        for i in range(h.gd_entries):
            gt = array("I", (max(self.gte.get(i * n + j, 0), 0) for j in range(n)))
            if any(gt):
                out += _marker(h.gt_sectors, MARKER_GT)
                gd[i] = (self.next + len(out)) // SECTOR
                out += _pad(gt.tobytes())
        gd_bytes = _pad(gd.tobytes())
        out += _marker(len(gd_bytes) // SECTOR, MARKER_GD)
        gd_at = (self.next + len(out)) // SECTOR
        out += gd_bytes
        footer = SparseHeader(**{**h.__dict__, "gd_offset": gd_at})
        out += _marker(1, MARKER_FOOTER) + footer.build() + _marker(0, MARKER_EOS)
        return bytes(out)


def create_stream(cls: Any, path: str, sectors: int, grain: int,
                  desc: vd.Descriptor) -> ImageLayer:
    header = sparse_header(sectors, grain, embedded=True, stream=True)
    header.gd_offset = GD_AT_END
    desc.extents = [vd.ExtentLine("RW", sectors, "SPARSE", os.path.basename(path))]
    desc.set_geometry(sectors)
    try:
        write_sparse_file(path, header, desc.render().encode())
    except BaseException:
        if os.path.exists(path):
            os.unlink(path)
        raise
    raw = RawFile(path)
    writer = StreamWriter(raw, header, sectors * SECTOR)
    area = (raw, header.desc_offset * SECTOR, header.desc_size * SECTOR)
    image: ImageLayer = cls(path, desc, [writer], read_only=False, desc_area=area)
    return image
