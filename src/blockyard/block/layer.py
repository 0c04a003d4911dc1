"""The ``Layer`` base class: one node of the block stack, in the nbdkit shape.

A stack is a chain of layers, client side first::

    bandwidth group -> cache policy -> write mode -> differencing chain
        -> format driver -> file or remote LUN

Every layer offers the same asynchronous operations (``pread``, ``pwrite``,
``flush``, ``trim``, ``zero``, ``extents``, ``cache``) and capabilities.
The public methods on this base class check the request contract once --
range, read-only, operation supported -- and then call the layer's private
``_op``.  A layer therefore implements only ``_pread`` and friends and may
trust its input:

* ``0 <= offset`` and ``offset + length <= size``;
* writes, trims and zeroes only reach a writable layer;
* ``data`` is any bytes-like object (bytes, bytearray, memoryview).

Errors are ``BlockError(errno)``: EINVAL for reads and trims past the end,
ENOSPC for writes and zeroes past the end (NBD proto.md, "Error values"),
EPERM for writes to a read-only layer, ENOTSUP for a fast-zero request a
layer cannot do quickly.

A filter layer passes ``inner`` to ``__init__`` and by default forwards every
operation and capability to it.  A leaf layer (a file, a RAM disk, a format
driver over a file) overrides the private ops.

Extents are ``(length, flags)`` pairs that start at the requested offset and
are contiguous; ``flags`` are the NBD ``base:allocation`` bits: ``HOLE`` (1)
means unallocated, ``ZERO`` (2) means reads return zeroes.  A layer may
return fewer bytes of extents than asked (at least one byte), never more.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from blockyard.errors import BlockError

HOLE = 1
ZERO = 2

Buffer = bytes | bytearray | memoryview
_ZERO_CHUNK = 1 << 20


class Extent(NamedTuple):
    length: int
    flags: int


Run = tuple[int, int, int]  # fd, offset in the file, length


class FileMap(list[Run]):
    """What ``Layer.sync_map`` answers: ``(fd, file offset, length)`` runs that hold a
    request's bytes, in request order, plus a pin.

    Until ``release()`` the layer keeps those file bytes meaning what they meant when
    it answered: no block is moved, reused or truncated away.  Call ``release`` once,
    from any thread, when the bytes have been read or sent; a second call does nothing.
    """

    __slots__ = ("_release",)

    def __init__(self, runs: Iterable[Run] = (),
                 release: Callable[[], None] | None = None) -> None:
        super().__init__(runs)
        self._release = release

    def add(self, fd: int, offset: int, length: int) -> None:
        """Append a run, joining it to the last one when it continues it in the file."""
        if self and self[-1][0] == fd and self[-1][1] + self[-1][2] == offset:
            self[-1] = (fd, self[-1][1], self[-1][2] + length)
        else:
            self.append((fd, offset, length))

    def on_release(self, release: Callable[[], None]) -> FileMap:
        self._release = release
        return self

    def release(self) -> None:
        fn, self._release = self._release, None
        if fn is not None:
            fn()

    def split_tail(self, nbytes: int) -> tuple[list[Run], bytearray]:
        """For a transport that queues the runs to send them later: the runs without
        their last ``nbytes`` (at most), and those bytes read now into a buffer that
        releases this map when it is freed.  Queue the buffer after the runs; when it
        has been sent or dropped so have they, and the map is released.  OSError from
        the read leaves the map pinned: the caller releases it."""
        fd, offset, length = self[-1]
        k = min(nbytes, length)
        runs = self[:-1] + ([(fd, offset, length - k)] if length > k else [])
        data = os.pread(fd, k, offset + length - k)
        return runs, _ReleasingTail(data + bytes(k - len(data)), self)


class _ReleasingTail(bytearray):
    """The last bytes of a mapped read; freeing the buffer releases the map."""

    __slots__ = ("_map",)

    def __init__(self, data: bytes, fmap: FileMap) -> None:
        super().__init__(data)
        self._map = fmap

    def __del__(self) -> None:
        self._map.release()


@dataclass(frozen=True, slots=True)
class Limits:
    """Block-size constraints a layer wants clients to honour (NBD_INFO_BLOCK_SIZE)."""

    minimum: int = 1
    preferred: int = 4096
    maximum: int = 32 << 20


class Layer:
    """Base of every block layer; see the module docstring for the contract."""

    size: int
    read_only: bool = False
    # A thread-safe blocking reader ``(offset, length) -> data`` when the layer can
    # serve reads synchronously from any thread (a raw file); None otherwise.  The
    # transport uses it to read and send a large reply in one I/O-thread job.
    sync_pread: Callable[[int, int], Buffer] | None = None
    # A file descriptor whose bytes at offset o are this layer's bytes at o (a raw
    # file), so a transport may send reads with sendfile(2); None otherwise.
    sendfile_fd: int | None = None
    # A thread-safe blocking writer ``(offset, data, fua) -> None`` that keeps no
    # reference to ``data`` once it returns (a raw file); None otherwise.
    sync_pwrite: Callable[[int, Buffer, bool], None] | None = None
    # A thread-safe mapper ``(offset, length) -> FileMap | None``: the (fd, file offset,
    # length) runs whose bytes are exactly the request's bytes, when every byte of it is
    # data stored plainly in files; None when any byte comes from elsewhere (a hole or
    # zero block, a parent, compressed data), lies outside the layer, or while the layer
    # moves blocks or runs maintenance -- then use ``pread``.  It never changes the
    # layer's state; the runs stay valid until ``FileMap.release()``, so a transport may
    # send them with sendfile(2) later, from any thread.
    sync_map: Callable[[int, int], FileMap | None] | None = None

    def __init__(self, inner: Layer | None = None) -> None:
        self.inner = inner
        if inner is not None:
            self.size = inner.size
            self.read_only = inner.read_only

    # ---- capabilities (filters forward, leaves override) -------------------
    def _cap(self, name: str) -> bool:
        return bool(self.inner is not None and getattr(self.inner, name))

    @property
    def can_write(self) -> bool:
        return not self.read_only

    @property
    def can_flush(self) -> bool:
        return self._cap("can_flush")

    @property
    def can_fua(self) -> bool:
        return self._cap("can_fua")

    @property
    def can_trim(self) -> bool:
        return self._cap("can_trim")

    @property
    def can_zero(self) -> bool:
        return self.can_write

    @property
    def can_fast_zero(self) -> bool:
        return self._cap("can_fast_zero")

    @property
    def can_multi_conn(self) -> bool:
        return self._cap("can_multi_conn")

    @property
    def can_cache(self) -> bool:
        return True

    @property
    def can_extents(self) -> bool:
        return self._cap("can_extents")

    @property
    def limits(self) -> Limits:
        return self.inner.limits if self.inner is not None else Limits()

    def describe(self) -> str:
        inner = f" -> {self.inner.describe()}" if self.inner is not None else ""
        return f"{type(self).__name__}{inner}"

    # ---- public, contract-checking operations ---------------------------------
    def _check(self, offset: int, length: int, past_end: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise BlockError(past_end, f"request {offset}+{length} outside 0..{self.size}")

    def _check_write(self, offset: int, length: int) -> None:
        if self.read_only:
            raise BlockError(errno.EPERM, "medium is read-only")
        self._check(offset, length, errno.ENOSPC)

    async def pread(self, offset: int, length: int) -> Buffer:
        if offset < 0 or length < 0 or offset + length > self.size:
            self._check(offset, length, errno.EINVAL)
        return await self._pread(offset, length)

    async def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        if self.read_only or offset < 0 or offset + len(data) > self.size:
            self._check_write(offset, len(data))
        await self._pwrite(offset, data, fua)

    async def flush(self) -> None:
        await self._flush()

    async def trim(self, offset: int, length: int, fua: bool = False) -> None:
        if self.read_only:
            raise BlockError(errno.EPERM, "medium is read-only")
        self._check(offset, length, errno.EINVAL)
        if length and self.can_trim:
            await self._trim(offset, length, fua)
        elif fua:
            await self._flush()

    async def zero(
        self, offset: int, length: int, *, may_trim: bool = False, fast: bool = False,
        fua: bool = False,
    ) -> None:
        self._check_write(offset, length)
        if fast and not self.can_fast_zero:
            raise BlockError(errno.ENOTSUP, "fast zero not supported")
        if length:
            await self._zero(offset, length, may_trim, fast, fua)

    async def extents(self, offset: int, length: int) -> list[Extent]:
        self._check(offset, length, errno.EINVAL)
        if length == 0:
            return []
        return await self._extents(offset, length)

    async def cache(self, offset: int, length: int) -> None:
        self._check(offset, length, errno.EINVAL)
        await self._cache(offset, length)

    async def close(self) -> None:
        await self._close()

    # ---- private operations: filters forward, leaves override -----------------
    def _next(self) -> Layer:
        if self.inner is None:
            raise BlockError(errno.ENOTSUP, f"{type(self).__name__} does not implement this")
        return self.inner

    async def _pread(self, offset: int, length: int) -> Buffer:
        return await self._next().pread(offset, length)

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        await self._next().pwrite(offset, data, fua)

    async def _flush(self) -> None:
        if self.inner is not None:
            await self.inner.flush()

    async def _trim(self, offset: int, length: int, fua: bool) -> None:
        await self._next().trim(offset, length, fua)

    async def _zero(self, offset: int, length: int, may_trim: bool, fast: bool,
                    fua: bool) -> None:
        if self.inner is not None:
            await self.inner.zero(offset, length, may_trim=may_trim, fast=fast, fua=fua)
            return
        await self.write_zeroes_slowly(offset, length, fua)

    async def write_zeroes_slowly(self, offset: int, length: int, fua: bool) -> None:
        """Zero a range by writing zero buffers; for leaves without a better way."""
        zeros = bytes(min(length, _ZERO_CHUNK))
        end = offset + length
        while offset < end:
            n = min(len(zeros), end - offset)
            await self._pwrite(offset, memoryview(zeros)[:n], False)
            offset += n
        if fua:
            await self._flush()

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        if self.inner is not None:
            return await self.inner.extents(offset, length)
        return [Extent(length, 0)]

    async def _cache(self, offset: int, length: int) -> None:
        if self.inner is not None:
            await self.inner.cache(offset, length)

    async def _close(self) -> None:
        if self.inner is not None:
            await self.inner.close()
