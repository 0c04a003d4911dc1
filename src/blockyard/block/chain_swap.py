"""A layer whose inner chain can be replaced under live sessions.

Sessions keep the ``SwapLayer`` object they were given for their whole life;
a snapshot operation replaces what is *inside* it (the differencing chain)
without the sessions noticing.

Theory of operation (one state machine, two states):

=========  =============================================================
open       requests enter the gate, run against ``inner``, leave
paused     new requests wait at the gate; ``paused()`` first waits until
           every request in flight has left, then yields: the caller may
           flush, close and ``replace`` the inner chain
=========  =============================================================

``paused()`` is an async context manager; leaving it reopens the gate and
the waiting requests run against the new chain.  No request ever runs
against a closed chain, none sees an error, and none sees data older than
what completed before the pause.

The transport may read raw files from an I/O thread (``sync_pread``,
``sendfile_fd``) without entering the gate.  Both are offered only while
the gate is open and only when the inner layer offers them (a bare raw
file); a swap never closes such a layer -- a snapshot keeps it open as the
new chain's read-only parent -- so a read already handed to a thread stays
valid and reads frozen bytes.

Dirty tracking: ``track()`` starts recording the ranges written, zeroed or
trimmed; ``untrack()`` returns them.  A snapshot merge copies a live child
into its parent while clients write, then copies the ranges dirtied
meanwhile again inside the final pause.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from blockyard.block.formats.vdi_vhd_common import IoGate
from blockyard.block.layer import Buffer, Extent, Layer
from blockyard.errors import BlockError

Range = tuple[int, int]  # offset, length


def coalesce(ranges: list[Range]) -> list[Range]:
    """Sorted, non-overlapping ranges covering the same bytes."""
    out: list[Range] = []
    for off, n in sorted(r for r in ranges if r[1] > 0):
        if out and off <= out[-1][0] + out[-1][1]:
            last_off, last_n = out[-1]
            out[-1] = (last_off, max(last_n, off + n - last_off))
        else:
            out.append((off, n))
    return out


class SwapLayer(Layer):
    """Keeps its identity for the sessions while its inner chain is swapped."""

    def __init__(self, inner: Layer) -> None:
        super().__init__(inner)
        self._gate = IoGate()
        self._dirty: list[Range] | None = None
        self.swaps = 0

    @property
    def chain(self) -> Layer:
        assert self.inner is not None
        return self.inner

    # ---- transport bypasses: only while open, only from a raw leaf ---------------
    @property  # type: ignore[override]
    def sync_pread(self) -> Callable[[int, int], Buffer] | None:
        return self.chain.sync_pread if self._gate._open.is_set() else None

    @sync_pread.setter
    def sync_pread(self, value: object) -> None:  # Layer's class attribute
        pass

    @property  # type: ignore[override]
    def sendfile_fd(self) -> int | None:
        return self.chain.sendfile_fd if self._gate._open.is_set() else None

    @sendfile_fd.setter
    def sendfile_fd(self, value: object) -> None:
        pass

    def describe(self) -> str:
        return f"swappable -> {self.chain.describe()}"

    # ---- the state machine ---------------------------------------------------------
    @asynccontextmanager
    async def paused(self) -> AsyncIterator[Layer]:
        """Hold new requests, wait for those in flight; yields the current chain."""
        async with self._gate.exclusive():
            yield self.chain

    def replace(self, new: Layer) -> Layer:
        """Install ``new`` (call inside ``paused()``); returns the old chain."""
        if self._gate._open.is_set():
            raise RuntimeError("SwapLayer.replace outside paused()")
        if new.size != self.size:
            raise BlockError(errno.EINVAL, f"new chain has {new.size} bytes, not {self.size}")
        old, self.inner = self.chain, new
        self.read_only = new.read_only
        self.swaps += 1
        return old

    def track(self) -> None:
        self._dirty = []

    def untrack(self) -> list[Range]:
        ranges, self._dirty = self._dirty or [], None
        return coalesce(ranges)

    # ---- every request passes the gate -----------------------------------------------
    async def _pread(self, offset: int, length: int) -> Buffer:
        await self._gate.enter()
        try:
            return await self.chain.pread(offset, length)
        finally:
            self._gate.leave()

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        await self._gate.enter()
        try:
            if self._dirty is not None:
                self._dirty.append((offset, len(data)))
            await self.chain.pwrite(offset, data, fua)
        finally:
            self._gate.leave()

    async def _trim(self, offset: int, length: int, fua: bool) -> None:
        await self._gate.enter()
        try:
            if self._dirty is not None:
                self._dirty.append((offset, length))
            await self.chain.trim(offset, length, fua)
        finally:
            self._gate.leave()

    async def _zero(self, offset: int, length: int, may_trim: bool, fast: bool,
                    fua: bool) -> None:
        await self._gate.enter()
        try:
            if self._dirty is not None:
                self._dirty.append((offset, length))
            await self.chain.zero(offset, length, may_trim=may_trim, fast=fast, fua=fua)
        finally:
            self._gate.leave()

    async def _flush(self) -> None:
        await self._gate.enter()
        try:
            await self.chain.flush()
        finally:
            self._gate.leave()

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        await self._gate.enter()
        try:
            return await self.chain.extents(offset, length)
        finally:
            self._gate.leave()

    async def _cache(self, offset: int, length: int) -> None:
        await self._gate.enter()
        try:
            await self.chain.cache(offset, length)
        finally:
            self._gate.leave()

    async def _close(self) -> None:
        await self.chain.close()
