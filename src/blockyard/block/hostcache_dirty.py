"""``DirtyMap``: the dirty bytes of the host-cache-off write-back cache.

A sorted list of non-overlapping byte extents, each one ``bytearray``.  A
write lands with ``insert``: it replaces what it overlaps and is coalesced
with the extents it overlaps or touches, so a sequential stream of small
writes becomes one extent (appending to the last extent grows its bytearray
in place).  ``discard`` cuts a range out (trim, zero, a write that bypasses
the cache); ``overlay`` copies the dirty bytes of a range over a buffer read
from disk, so a read never returns data older than an acknowledged write.

Pure and synchronous: the cache layer decides when maps are written out.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator

from blockyard.block.layer import Buffer


class DirtyMap:
    __slots__ = ("_starts", "_bufs", "nbytes")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._bufs: list[bytearray] = []
        self.nbytes = 0

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __len__(self) -> int:
        return len(self._starts)

    def extents(self) -> Iterator[tuple[int, bytearray]]:
        return zip(self._starts, self._bufs, strict=True)

    def _span(self, offset: int, end: int, touching: bool) -> tuple[int, int]:
        """Indexes [lo, hi) of the extents overlapping (or touching) [offset, end)."""
        starts, bufs = self._starts, self._bufs
        lo = bisect_right(starts, offset) - 1
        if lo < 0:
            lo = 0
        else:
            reach = starts[lo] + len(bufs[lo])
            if reach < offset or (reach == offset and not touching):
                lo += 1
        hi = bisect_right(starts, end) if touching else bisect_left(starts, end)
        return lo, hi

    def insert(self, offset: int, data: Buffer) -> None:
        end = offset + len(data)
        if end == offset:
            return
        lo, hi = self._span(offset, end, touching=True)
        starts, bufs = self._starts, self._bufs
        if lo == hi:
            starts.insert(lo, offset)
            bufs.insert(lo, bytearray(data))
            self.nbytes += end - offset
            return
        first, last = starts[lo], starts[hi - 1] + len(bufs[hi - 1])
        if hi - lo == 1 and first + len(bufs[lo]) == offset:  # the sequential stream
            bufs[lo] += data
            self.nbytes += end - offset
            return
        new_start, new_end = min(first, offset), max(last, end)
        merged = bytearray(new_end - new_start)
        for i in range(lo, hi):
            s = starts[i] - new_start
            merged[s:s + len(bufs[i])] = bufs[i]
            self.nbytes -= len(bufs[i])
        merged[offset - new_start:end - new_start] = data
        starts[lo:hi] = [new_start]
        bufs[lo:hi] = [merged]
        self.nbytes += len(merged)

    def discard(self, offset: int, length: int) -> None:
        if length <= 0:
            return
        end = offset + length
        lo, hi = self._span(offset, end, touching=False)
        if lo >= hi:
            return
        starts, bufs = self._starts, self._bufs
        keep_s: list[int] = []
        keep_b: list[bytearray] = []
        for i in range(lo, hi):
            s, b = starts[i], bufs[i]
            e = s + len(b)
            if s < offset:
                keep_s.append(s)
                keep_b.append(b[:offset - s])
            if e > end:
                keep_s.append(end)
                keep_b.append(b[end - s:])
            self.nbytes -= len(b)
        starts[lo:hi] = keep_s
        bufs[lo:hi] = keep_b
        self.nbytes += sum(len(b) for b in keep_b)

    def overlaps(self, offset: int, length: int) -> bool:
        if length <= 0:
            return False
        lo, hi = self._span(offset, offset + length, touching=False)
        return lo < hi

    def overlay(self, offset: int, out: bytearray | memoryview) -> None:
        """Copy the dirty bytes within [offset, offset + len(out)) into ``out``."""
        end = offset + len(out)
        lo, hi = self._span(offset, end, touching=False)
        starts, bufs = self._starts, self._bufs
        for i in range(lo, hi):
            s, b = starts[i], bufs[i]
            a, z = max(s, offset), min(s + len(b), end)
            out[a - offset:z - offset] = memoryview(b)[a - s:z - s]
