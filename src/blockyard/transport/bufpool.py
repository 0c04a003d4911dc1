"""Recycled receive buffers for large NBD WRITE payloads.

``bytearray(n)`` zero-fills every byte; for 1 MiB writes that memset, done on
the loop thread with the GIL held, was the largest single cost seen with
py-spy.  Buffers are recycled only on paths whose writer is known to keep no
reference once it returns (``Layer.sync_pwrite``).  ``deque`` append/pop are
atomic, so I/O threads may give buffers back without a lock.
"""

from __future__ import annotations

from collections import deque

MIN_SIZE = 64 << 10
PER_SIZE = 32  # idle buffers kept per size


class PayloadPool:
    def __init__(self) -> None:
        self._free: dict[int, deque[bytearray]] = {}

    def get(self, size: int) -> bytearray:
        free = self._free.get(size)
        if free:
            try:
                return free.pop()
            except IndexError:  # emptied by another thread meanwhile
                pass
        return bytearray(size)

    def put(self, buf: object) -> None:
        if type(buf) is not bytearray or len(buf) < MIN_SIZE:
            return
        free = self._free.setdefault(len(buf), deque())
        if len(free) < PER_SIZE:
            free.append(buf)
