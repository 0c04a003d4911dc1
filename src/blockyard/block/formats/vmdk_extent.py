"""VMDK extents: the pieces a descriptor concatenates into one disk (§2.1).

Every extent serves a byte range ``[start, start + size)`` of the virtual
disk; offsets passed to its methods are relative to ``start`` and already
checked by the image.  This module holds the base class and the two
extents without metadata: FLAT (a raw file from a start sector, also VMFS)
and ZERO (no file, reads zeros).  Sparse extents live in ``vmdk_sparse``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable

from blockyard.block.formats.base import CheckReport
from blockyard.block.layer import HOLE, ZERO, Buffer, Extent, FileMap
from blockyard.block.raw import RawFile
from blockyard.errors import BlockError

SECTOR = 512
Backing = Callable[[int, int], Awaitable[Buffer]]  # (virtual offset, length) -> data


def _nothing() -> None:
    pass


def merge(out: list[Extent], length: int, flags: int) -> None:
    if out and out[-1].flags == flags:
        out[-1] = Extent(out[-1].length + length, flags)
    else:
        out.append(Extent(length, flags))


class VmdkExtent:
    """Base: a slice of the virtual disk backed by zero or one file."""

    kind = "?"
    path: str | None = None
    raw: RawFile | None = None
    dirty_at_open = False
    has_metadata = False

    def __init__(self, size: int, access: str = "RW") -> None:
        self.start = 0
        self.size = size
        self.access = access

    async def read(self, off: int, length: int) -> Buffer:
        raise NotImplementedError

    async def write(self, off: int, data: Buffer) -> None:
        raise BlockError(errno.EPERM, f"{self.kind} extent is read-only")

    async def zero(self, off: int, length: int, may_trim: bool) -> None:
        raise BlockError(errno.EPERM, f"{self.kind} extent is read-only")

    async def extents(self, off: int, length: int) -> list[Extent]:
        return [Extent(length, 0)]

    def sync_map(self, off: int, length: int, fmap: FileMap) -> Callable[[], None] | None:
        """``Layer.sync_map`` for this extent: add the file runs of the range to ``fmap``
        and return what releases them, or None when some byte is not plain file data
        (the caller then drops ``fmap``).  Any thread; reads, never changes."""
        return None

    async def mark_dirty(self) -> None:
        """Called once before the first change after open."""

    async def flush(self) -> None:
        if self.raw is not None:
            await self.raw._flush()

    async def close(self) -> None:
        if self.raw is not None:
            await self.raw._close()

    def allocated_bytes(self) -> int:
        if self.raw is None or self.raw.fd < 0:
            return 0
        return os.fstat(self.raw.fd).st_blocks * SECTOR

    def check(self, report: CheckReport, repair: bool) -> None:
        """Whole-file consistency scan; append findings to ``report``."""

    def set_backing(self, backing: Backing | None) -> None:
        """Where unallocated data of a differencing extent comes from."""


class ZeroExtent(VmdkExtent):
    """``ZERO``: no file; reads return zeros (§2.1)."""

    kind = "ZERO"

    async def read(self, off: int, length: int) -> Buffer:
        return bytes(length)

    async def extents(self, off: int, length: int) -> list[Extent]:
        return [Extent(length, HOLE | ZERO)]


class FlatExtent(VmdkExtent):
    """``FLAT`` / ``VMFS``: raw data in a file from sector ``offset`` on (§2.1)."""

    kind = "FLAT"

    def __init__(self, raw: RawFile, size: int, offset_sectors: int, access: str = "RW") -> None:
        super().__init__(size, access)
        self.raw = raw
        self.path = raw.path
        self.base = offset_sectors * SECTOR

    def file_size(self) -> int:
        assert self.raw is not None
        return os.fstat(self.raw.fd).st_size

    async def read(self, off: int, length: int) -> Buffer:
        assert self.raw is not None
        return await self.raw._pread(self.base + off, length)  # short file: zeros past EOF

    async def write(self, off: int, data: Buffer) -> None:
        assert self.raw is not None
        await self.raw._pwrite(self.base + off, data, False)

    async def zero(self, off: int, length: int, may_trim: bool) -> None:
        assert self.raw is not None
        await self.raw._zero(self.base + off, length, may_trim, False, False)

    async def extents(self, off: int, length: int) -> list[Extent]:
        assert self.raw is not None
        end_file = self.file_size() - self.base
        out: list[Extent] = []
        inside = max(0, min(length, end_file - off))
        if inside:
            self.raw.size = max(self.raw.size, self.file_size())
            for e in await self.raw._extents(self.base + off, inside):
                merge(out, e.length, e.flags)
        if inside < length:
            merge(out, length - inside, HOLE | ZERO)
        return out

    def sync_map(self, off: int, length: int, fmap: FileMap) -> Callable[[], None] | None:
        raw = self.raw
        if raw is None or raw.fd < 0 or self.base + off + length > self.file_size():
            return None  # past the end of the file reads zeros
        fmap.add(raw.fd, self.base + off, length)
        return _nothing  # no metadata: only resize moves data, under the image's gate

    def check(self, report: CheckReport, repair: bool) -> None:
        if self.file_size() < self.base + self.size:
            report.errors.append(f"{self.path}: flat extent file is {self.file_size()} bytes, "
                                 f"the descriptor needs {self.base + self.size}")
