"""``DirectFile``: a raw file with the host cache off (O_DIRECT + our own write cache).

Theory of operation
-------------------
Data never goes through the page cache: reads and writes use an O_DIRECT
descriptor and page-aligned pool buffers; requests that are not aligned are
widened to aligned blocks (reads) or read-modify-written (writes).  There is
no read cache.  Every data I/O runs on the I/O thread pool, so requests
overlap.  A second, ordinary descriptor serves metadata calls (fallocate,
SEEK_DATA) and the partial last block of a file whose size is not aligned.

Writes go to a small write-back cache of our own and are acknowledged once
copied there.  Dirty data moves to disk in a *write-out*: the dirty map
(``DirtyMap``) is swapped for an empty one (it becomes the *flushing* map),
planned into disjoint aligned jobs (``hostcache_io.plan_jobs``) and written by
several threads at once, while new writes fill the new dirty map.  The two
maps together never hold more than ``cache_limit`` bytes (16 MiB): a write
that would pass it waits until a write-out finishes (back-pressure; waiting
writers go first come, first served).  A write-out happens

* on FLUSH (then ``fdatasync``), and on close;
* in the background from a quarter full, repeated while writers wait;
* at the latest ``writeout_delay`` seconds (default 1 s) after the cache
  became dirty, from a timer;
* before EXTENTS over a dirty range (so holes are reported truthfully).

FUA writes, writes of at least ``cache_limit / 4`` bytes and all writes while
the write cache is disabled bypass the cache: they drop what they overwrite
from the dirty map and are written through at once (FUA and disabled cache
with RWF_DSYNC).  Trim and zero also drop their range from the dirty map.

One ``asyncio.Lock`` serializes everything that changes the disk: write-outs,
write-throughs, trim, zero.  So the read half of a read-modify-write cannot
race another write to the same block, and a write-out cannot put back data
that a later write-through replaced.  Reads take no lock: a read reads the
disk, then lays over it, oldest first, every map whose data may not have
reached the disk when the read started (maps retired by write-outs that
finished after the read began, kept until such reads are done; the flushing
map; the dirty map).  So a read never returns data older than a write
acknowledged before the read was issued.

A failed write-out puts its data back under the newer dirty data and fails
the FLUSH (or the writes waiting for room) with the errno; the timer retries
later.  A process crash loses
what the cache held (at most ``cache_limit`` bytes and about a second of
writes): exactly what the protocols allow for writes that were never flushed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections import Counter
from typing import Any

from blockyard.block.hostcache_dirty import DirtyMap
from blockyard.block.hostcache_io import plan_jobs, read_aligned_sync, write_job_sync
from blockyard.block.layer import Buffer, Extent, Limits
from blockyard.block.raw import RawFile, _io_error
from blockyard.errors import BlockError, MediaError
from blockyard.util import fallocate as fa
from blockyard.util.aio import run_blocking
from blockyard.util.aligned import BufferPool

log = logging.getLogger("blockyard.hostcache")
ALIGN = 4096
CACHE_LIMIT = 16 << 20
WRITEOUT_DELAY = 1.0
MAX_JOB = 1 << 20  # write-outs run as jobs of up to 1 MiB, several at a time
_POOL = BufferPool()


class DirectIOUnsupported(MediaError):
    """The filesystem refuses O_DIRECT (tmpfs and friends)."""


class DirectFile(RawFile):
    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False,
                 cache_limit: int = CACHE_LIMIT,
                 writeout_delay: float = WRITEOUT_DELAY) -> None:
        super().__init__(path, read_only=read_only)
        self.sync_pread = None  # every read must see the dirty map: no transport bypass
        self.sendfile_fd = None
        self.sync_pwrite = None  # writes go through our write-back cache
        self.align = ALIGN
        self.dfd = self._open_direct()
        self.cache_limit = cache_limit
        self.writeout_delay = writeout_delay
        self._cache_on = cache_limit > 0
        self._dirty = DirtyMap()
        self._flushing: DirtyMap | None = None
        self._retired: list[tuple[int, DirtyMap]] = []
        self._generation = 0
        self._readers: Counter[int] = Counter()
        self._io_lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._background: asyncio.Task[None] | None = None
        self._room_queue: list[list[asyncio.Future[None]]] = []  # writers waiting, in order

    def _open_direct(self) -> int:
        flags = (os.O_RDONLY if self.read_only else os.O_RDWR) | os.O_CLOEXEC | os.O_DIRECT
        try:
            dfd = os.open(self.path, flags)
        except OSError as exc:
            os.close(self.fd)
            if exc.errno == errno.EINVAL:
                raise DirectIOUnsupported(f"{self.path}: O_DIRECT refused") from None
            raise MediaError(f"{self.path}: cannot open: {exc.strerror}") from None
        if self.size >= self.align:  # some filesystems accept the flag, then fail the I/O
            try:
                read_aligned_sync(dfd, _POOL, 0, self.align, self.align)
            except OSError as exc:
                os.close(dfd)
                os.close(self.fd)
                if exc.errno == errno.EINVAL:
                    raise DirectIOUnsupported(f"{self.path}: O_DIRECT reads fail") from None
                raise MediaError(f"{self.path}: cannot read: {exc.strerror}") from None
        return dfd

    # ---- capabilities ---------------------------------------------------------------
    @property
    def write_cache_enabled(self) -> bool:
        """True while acknowledged writes may sit in our cache until FLUSH."""
        return self._cache_on

    def set_write_cache(self, enabled: bool) -> None:
        """Turn our write cache on or off (SCSI WCE); turning it off writes it out."""
        self._cache_on = enabled and self.cache_limit > 0
        if not self._cache_on and self._dirty:
            self._kick_writeout()

    @property
    def limits(self) -> Limits:
        return Limits(1, self.align, 32 << 20)

    def describe(self) -> str:
        return f"raw-direct:{self.path}"

    # ---- reads ----------------------------------------------------------------------
    async def _pread(self, offset: int, length: int) -> Buffer:
        generation = self._generation
        self._readers[generation] += 1
        try:
            out = await run_blocking(read_aligned_sync, self.dfd, _POOL, offset, length,
                                     self.align)
            self._overlay(generation, offset, out)  # before _reader_done may prune maps
            return out
        except OSError as exc:
            raise _io_error(exc) from None
        finally:
            self._reader_done(generation)

    def _overlay(self, generation: int, offset: int, out: bytearray) -> None:
        """Lay every map the disk read may have missed over ``out``, oldest first."""
        for gen, retired in self._retired:
            if gen > generation:
                retired.overlay(offset, out)
        if self._flushing is not None:
            self._flushing.overlay(offset, out)
        self._dirty.overlay(offset, out)

    def _reader_done(self, generation: int) -> None:
        self._readers[generation] -= 1
        if not self._readers[generation]:
            del self._readers[generation]
        oldest = min(self._readers, default=self._generation)
        if self._retired and self._retired[0][0] <= oldest:
            self._retired = [(g, m) for g, m in self._retired if g > oldest]

    # ---- writes ---------------------------------------------------------------------
    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        n = len(data)
        if fua or not self._cache_on or n >= self.cache_limit // 4:
            await self._write_through(offset, data, dsync=fua or not self._cache_on)
            return
        if self._room_queue or self._held() + n > self.cache_limit:
            await self._make_room(n)  # back-pressure, first come first served
        self._dirty.insert(offset, data)
        if self._dirty.nbytes >= self.cache_limit // 4:  # start early: writers rarely wait
            self._kick_writeout()
        else:
            self._arm_timer()

    def _held(self) -> int:
        """Bytes the cache holds: the dirty map and the one being written out."""
        return self._dirty.nbytes + (self._flushing.nbytes if self._flushing else 0)

    async def _make_room(self, n: int) -> None:
        """Wait until this writer is first in line and ``n`` more bytes fit."""
        loop = asyncio.get_running_loop()
        me: list[asyncio.Future[None]] = [loop.create_future()]
        self._room_queue.append(me)
        try:
            while self._room_queue[0] is not me or (
                    self._held() and self._held() + n > self.cache_limit):
                self._kick_writeout()
                me[0] = loop.create_future()
                await me[0]
        finally:
            self._room_queue.remove(me)
            self._wake_writers(None)  # the next in line checks again

    def _wake_writers(self, error: BaseException | None) -> None:
        for (waiter,) in self._room_queue:
            if not waiter.done():
                waiter.set_result(None) if error is None else waiter.set_exception(error)

    async def _write_through(self, offset: int, data: Buffer, dsync: bool) -> None:
        async with self._io_lock:
            self._dirty.discard(offset, len(data))
            await self._write_extents([(offset, data)], dsync)

    async def _write_extents(self, extents: Any, dsync: bool) -> None:
        jobs = plan_jobs(extents, self.align, MAX_JOB)
        calls = [run_blocking(write_job_sync, self.dfd, self.fd, self.size, job, _POOL,
                              self.align, dsync) for job in jobs]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            if isinstance(result, OSError):
                raise _io_error(result)
            if isinstance(result, BaseException):
                raise result

    async def _writeout(self) -> None:
        """Move the dirty map to disk (no fdatasync)."""
        async with self._io_lock:
            if not self._dirty:
                return
            flushing = self._flushing = self._dirty
            self._dirty = DirtyMap()
            try:
                await self._write_extents(list(flushing.extents()), dsync=False)
            except BaseException:
                self._restore(flushing)
                raise
            finally:
                self._retire(flushing)

    def _restore(self, failed: DirtyMap) -> None:
        newer, self._dirty = self._dirty, failed
        for offset, data in newer.extents():
            failed.insert(offset, data)

    def _retire(self, done: DirtyMap) -> None:
        self._flushing = None
        self._generation += 1
        if self._readers:
            self._retired.append((self._generation, done))

    # ---- the timer ------------------------------------------------------------------
    def _arm_timer(self) -> None:
        if self._timer is None and self._background is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.writeout_delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._kick_writeout()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _kick_writeout(self) -> None:
        self._cancel_timer()
        if self._background is None:
            self._background = asyncio.get_running_loop().create_task(self._background_run())

    async def _background_run(self) -> None:
        """Write out until the cache is below a quarter full and no writer waits."""
        error: BlockError | None = None
        try:
            while self._dirty:
                await self._writeout()
                self._wake_writers(None)
                if self._dirty.nbytes < self.cache_limit // 4 and not self._room_queue:
                    break
        except BlockError as exc:
            error = exc
            log.error("%s: background write-out failed (will retry): %s", self.path, exc)
        finally:
            self._background = None
            self._wake_writers(error)
        if self._dirty:
            self._arm_timer()

    # ---- flush, trim, zero, extents, cache -------------------------------------------
    async def _flush(self) -> None:
        await self._writeout()
        try:
            await run_blocking(os.fdatasync, self.dfd)
        except OSError as exc:
            raise _io_error(exc) from None

    async def _trim(self, offset: int, length: int, fua: bool) -> None:
        async with self._io_lock:
            self._dirty.discard(offset, length)
            await super()._trim(offset, length, False)
        if fua:
            await self._flush()

    async def _zero(self, offset: int, length: int, may_trim: bool, fast: bool,
                    fua: bool) -> None:
        slow = False
        async with self._io_lock:
            self._dirty.discard(offset, length)
            try:
                if may_trim and self._can_punch:
                    fa.punch_hole(self.fd, offset, length)
                else:
                    fa.zero_range(self.fd, offset, length)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.ENODEV):
                    raise _io_error(exc) from None
                slow = True
        if slow:
            if fast:
                raise BlockError(errno.ENOTSUP, "fast zero not supported here")
            await self.write_zeroes_slowly(offset, length, False)
        if fua:
            await self._flush()

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        if self._dirty.overlaps(offset, length) or self._flushing is not None:
            await self._writeout()
        return await super()._extents(offset, length)

    async def _cache(self, offset: int, length: int) -> None:
        return None  # no read cache with the host cache off: prefetching is pointless

    async def _close(self) -> None:
        self._cancel_timer()
        if self._background is not None:
            await asyncio.gather(self._background, return_exceptions=True)
        if self.dfd >= 0:
            try:
                await self._flush()
            finally:
                os.close(self.dfd)
                self.dfd = -1
        await super()._close()
