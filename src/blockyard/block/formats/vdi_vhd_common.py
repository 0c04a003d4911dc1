"""Machinery the block-mapped drivers share: VDI (vdi.py) and VHD (vhd.py).

* ``MappedImage``: a leaf layer over one ``RawFile`` whose guest space is cut
  into equal blocks; reads are split per block (``_read_piece``), metadata
  changes run under one ``asyncio.Lock``, and ``flush`` publishes the
  metadata kept in memory (``_publish``, §7 of image-formats.md).
* ``IoGate``: lets lock-free data I/O run concurrently and lets a block move
  run alone; ``sync_map`` answers (``Layer.sync_map``) pin it from any thread
  until the transport has sent their bytes.
* ``plan_moves``: which blocks to move into which holes when compacting.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import TypeVar

from blockyard.block.formats.base import ImageLayer
from blockyard.block.layer import Buffer, FileMap, Layer
from blockyard.block.raw import RawFile
from blockyard.errors import BlockError, MediaError
from blockyard.util import fallocate as fa

T = TypeVar("T")
_ZEROS = bytes(1 << 20)


def zeros(n: int) -> bytes:
    return _ZEROS[:n] if n <= len(_ZEROS) else bytes(n)


def is_zero(buf: Buffer) -> bool:
    z = zeros(len(buf))
    return bytes(buf) == z if isinstance(buf, memoryview) else buf == z


class IoGate:
    """Lock-free data I/O runs concurrently; ``exclusive()`` waits it out and holds it off.

    Block moves (squeeze, compact) and slot frees use it so that no read or
    write is in flight on a slot whose meaning changes.  Requests on the loop
    ``enter``/``leave``; any thread may ``pin``/``unpin`` (a mapped read whose
    runs are still to be sent), refused while an exclusive holder waits or runs.
    """

    def __init__(self) -> None:
        self.busy = 0
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pin_lock = threading.Lock()  # guards the three below, never a system call
        self._pins = 0
        self._pinnable = True
        self._unpinned: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def pin(self) -> bool:
        """From any thread: hold the gate open until ``unpin``; False while it is closing."""
        with self._pin_lock:
            if not self._pinnable:
                return False
            self._pins += 1
            return True

    def unpin(self) -> None:
        with self._pin_lock:
            self._pins -= 1
            waiter = None if self._pins else self._unpinned
            if waiter is not None:
                self._unpinned = None
        if waiter is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                waiter[0].call_soon_threadsafe(waiter[1].set)

    async def _pins_gone(self) -> None:
        with self._pin_lock:
            if not self._pins:
                return
            event = asyncio.Event()
            self._unpinned = (asyncio.get_running_loop(), event)
        await event.wait()

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
        with self._pin_lock:
            self._pinnable = False
        try:
            await self._idle.wait()
            await self._pins_gone()
            yield
        finally:
            with self._pin_lock:
                self._pinnable = True
                self._unpinned = None
            self._open.set()


class MappedImage(ImageLayer):
    """A leaf layer over one file whose guest space is mapped block by block."""

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
        self.sync_map = self._sync_map

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
        raise NotImplementedError

    def _sync_map(self, offset: int, length: int) -> FileMap | None:
        """``Layer.sync_map``: the gate pinned (so no block moves) while the runs are used."""
        if offset < 0 or length <= 0 or offset + length > self.size or self.file.fd < 0:
            return None
        if not self._gate.pin():
            return None
        fmap = FileMap()
        try:
            mapped = self._map_into(fmap, offset, length)
        except BaseException:
            self._gate.unpin()
            raise
        if not mapped:
            self._gate.unpin()
            return None
        return fmap.on_release(self._gate.unpin)

    def _map_into(self, fmap: FileMap, offset: int, length: int) -> bool:
        """Add the file runs of the range to ``fmap``; False when some byte is not plain
        data in this file.  Runs on any thread with the gate pinned: reads, never changes."""
        return False

    def _punch(self, offset: int, length: int) -> None:
        try:
            fa.punch_hole(self.file.fd, offset, length)
        except OSError:
            pass  # only space: the block is unreferenced and gets moved over or reused

    async def _read_parent(self, offset: int, length: int) -> Buffer:
        if self.parent is None:
            raise BlockError(errno.EIO, f"{self.path}: differencing image has no parent attached")
        end = min(offset + length, self.parent.size)
        data = await self.parent.pread(offset, max(0, end - offset)) if end > offset else b""
        return data if len(data) == length else bytes(data) + bytes(length - len(data))

    async def _flush(self) -> None:
        async with self._lock:
            await self._publish()

    async def _publish(self, final: bool = False) -> None:
        """Make the metadata kept in memory durable (lock held); ``final`` at close."""
        raise NotImplementedError

    async def _cache(self, offset: int, length: int) -> None:
        return None

    async def _close(self) -> None:
        if self.file.fd < 0:
            return
        try:
            if not self.read_only:
                async with self._lock:
                    await self._publish(final=True)
        finally:
            await self.file.close()

    def _allocated_bytes(self) -> int:
        return os.fstat(self.file.fd).st_blocks * 512

    @staticmethod
    def open_file(path: str | os.PathLike[str], read_only: bool,
                  load: Callable[[int, str], T]) -> tuple[str, RawFile, T]:
        """Open the file and run ``load`` (which validates); close it again on failure."""
        p = os.fspath(path)
        file = RawFile(p, read_only=read_only)
        try:
            return p, file, load(file.fd, p)
        except OSError as exc:
            os.close(file.fd)
            raise MediaError(f"{p}: cannot read: {exc.strerror}") from None
        except BaseException:
            os.close(file.fd)
            raise

    @staticmethod
    def new_file(path: str | os.PathLike[str], write: Callable[[int], None]) -> str:
        """Create a new file (never overwrite), let ``write`` lay it out, fsync it."""
        p = os.fspath(path)
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            raise MediaError(f"{p}: already exists") from None
        except OSError as exc:
            raise MediaError(f"{p}: cannot create: {exc.strerror}") from None
        try:
            write(fd)
            os.fsync(fd)
        except OSError as exc:
            os.unlink(p)
            raise MediaError(f"{p}: cannot create: {exc.strerror}") from None
        finally:
            os.close(fd)
        return p



def plan_moves(live: list[int], holes: list[int]) -> list[tuple[int, int]]:
    """Pair the highest live positions with the lowest holes below them.

    Positions are slot numbers (VDI) or byte offsets of equal-sized blocks
    (VHD).  Moving a block into a hole never overlaps live data, so each move
    is crash safe once the copy is synced before the map points at it.
    """
    moves: list[tuple[int, int]] = []
    tops = sorted(live, reverse=True)
    for hole, top in zip(sorted(holes), tops, strict=False):
        if hole >= top:
            break
        moves.append((top, hole))
    return moves


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    return data + bytes(length - len(data))



def preallocate(fd: int, offset: int, length: int) -> None:
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, offset + length)
