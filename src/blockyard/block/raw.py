"""The raw file driver: a regular file (or block device) as a leaf layer.

* reads and writes use ``os.pread`` / ``os.pwrite``; requests up to
  ``inline_max`` bytes run inline on the event loop (a page-cache hit costs
  less than a thread hop), larger ones on the I/O thread pool;
* FUA writes use ``pwritev(..., RWF_DSYNC)``; flush is ``fdatasync``;
* trim punches holes, zero uses ZERO_RANGE / PUNCH_HOLE, and extents come from
  ``SEEK_DATA`` / ``SEEK_HOLE``;
* ``create`` makes a sparse file of the requested size.
"""

from __future__ import annotations

import errno
import os
import stat

from blockyard.block.layer import HOLE, ZERO, Buffer, Extent, Layer
from blockyard.errors import BlockError, MediaError
from blockyard.util import fallocate as fa
from blockyard.util.aio import run_blocking

DEFAULT_INLINE_MAX = int(os.environ.get("BLOCKYARD_INLINE_MAX", 64 << 10))


def _io_error(exc: OSError) -> BlockError:
    err = exc.errno or errno.EIO
    if err in (errno.EDQUOT, errno.EFBIG):
        err = errno.ENOSPC
    return BlockError(err, str(exc))


class RawFile(Layer):
    """A raw image file; ``inline_max`` bounds the requests served on the loop."""

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False,
                 inline_max: int = DEFAULT_INLINE_MAX) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.read_only = read_only
        self.inline_max = inline_max
        try:
            self.fd = os.open(self.path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise MediaError(f"{self.path}: cannot open: {exc.strerror}") from None
        st = os.fstat(self.fd)
        self.is_block_device = stat.S_ISBLK(st.st_mode)
        if self.is_block_device:
            self.size = os.lseek(self.fd, 0, os.SEEK_END)
        elif stat.S_ISREG(st.st_mode):
            self.size = st.st_size
        else:
            os.close(self.fd)
            raise MediaError(f"{self.path}: not a regular file or block device")
        self._can_punch = not self.is_block_device
        self.sync_pread = self._read_sync
        self.sendfile_fd = self.fd
        self.sync_pwrite = None if read_only else self._write_sync

    @classmethod
    def create_sparse(cls, path: str | os.PathLike[str], size: int, **kw: object) -> RawFile:
        """Create a sparse raw image; refuses to overwrite an existing file."""
        try:
            fd = os.open(os.fspath(path), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            raise MediaError(f"{os.fspath(path)}: already exists") from None
        except OSError as exc:
            raise MediaError(f"{os.fspath(path)}: cannot create: {exc.strerror}") from None
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        return cls(path, **kw)  # type: ignore[arg-type]

    can_flush = True  # type: ignore[assignment]
    can_fua = True  # type: ignore[assignment]
    can_multi_conn = True  # type: ignore[assignment]
    can_extents = True  # type: ignore[assignment]

    @property
    def can_trim(self) -> bool:  # type: ignore[override]
        return not self.read_only and self._can_punch

    @property
    def can_fast_zero(self) -> bool:  # type: ignore[override]
        return not self.read_only and self._can_punch

    # ---- data path -----------------------------------------------------------
    def _read_sync(self, offset: int, length: int) -> Buffer:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:  # short read: only at EOF of a shrinking file
            return data + bytes(length - len(data))
        return data

    def _write_sync(self, offset: int, data: Buffer, fua: bool) -> None:
        if fua:
            n = os.pwritev(self.fd, [data], offset, os.RWF_DSYNC)
        else:
            n = os.pwrite(self.fd, data, offset)
        if n != len(data):  # a short write means the filesystem is full
            mv = memoryview(data)[n:]
            while mv:
                n = os.pwrite(self.fd, mv, offset + len(data) - len(mv))
                mv = mv[n:]

    async def _pread(self, offset: int, length: int) -> Buffer:
        try:
            if length <= self.inline_max:
                return self._read_sync(offset, length)
            return await run_blocking(self._read_sync, offset, length)
        except OSError as exc:
            raise _io_error(exc) from None

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        try:
            if len(data) <= self.inline_max and not fua:
                self._write_sync(offset, data, fua)
            else:
                await run_blocking(self._write_sync, offset, data, fua)
        except OSError as exc:
            raise _io_error(exc) from None

    async def _flush(self) -> None:
        try:
            await run_blocking(os.fdatasync, self.fd)
        except OSError as exc:
            raise _io_error(exc) from None

    async def _trim(self, offset: int, length: int, fua: bool) -> None:
        try:
            fa.punch_hole(self.fd, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise _io_error(exc) from None
            self._can_punch = False  # trim is advisory: ignore
        if fua:
            await self._flush()

    async def _zero(self, offset: int, length: int, may_trim: bool, fast: bool,
                    fua: bool) -> None:
        try:
            if may_trim and self._can_punch:
                fa.punch_hole(self.fd, offset, length)
            else:
                fa.zero_range(self.fd, offset, length)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENODEV):
                raise _io_error(exc) from None
            if fast:
                raise BlockError(errno.ENOTSUP, "fast zero not supported here") from None
            await self.write_zeroes_slowly(offset, length, False)
        if fua:
            await self._flush()

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        if self.is_block_device:
            return [Extent(length, 0)]
        end = offset + length
        out: list[Extent] = []
        pos = offset
        try:
            while pos < end:
                data = self._seek(pos, os.SEEK_DATA)
                if data > pos:
                    out.append(Extent(min(data, end) - pos, HOLE | ZERO))
                    pos = min(data, end)
                    continue
                hole = self._seek(pos, os.SEEK_HOLE)
                out.append(Extent(min(hole, end) - pos, 0))
                pos = min(hole, end)
        except OSError as exc:
            raise _io_error(exc) from None
        return out

    def _seek(self, pos: int, whence: int) -> int:
        try:
            return os.lseek(self.fd, pos, whence)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no more data past pos: hole to EOF
                return self.size
            raise

    async def _cache(self, offset: int, length: int) -> None:
        os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_WILLNEED)

    async def _close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            self.sendfile_fd = None
            self.sync_pread = None
            self.sync_pwrite = None
            os.close(fd)

    def describe(self) -> str:
        return f"raw:{self.path}"
