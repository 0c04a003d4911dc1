"""Read buffers of an initiator session, reused once nothing refers to them any more.

``bytearray(n)`` zero-fills (and, for large n, page-faults in) every byte that
the Data-In then overwrites; for 1 MiB reads re-exported over NBD that memset
on the loop thread was about a tenth of the server's time.  A buffer handed
out is also kept here; it is handed out again only when its reference count
says this pool is its sole owner -- no caller, no memoryview of it, no command,
no queued reply (a view holds a reference to the bytearray it shows) -- so a
recycled buffer is never one still being filled, used or sent.

A reader that gets fewer bytes than it asked for (an underflow) must not
return the rest of a recycled buffer: it holds an older read's bytes
(``RemoteLun`` zeroes it).
"""

from __future__ import annotations

from sys import getrefcount

MIN = 64 << 10  # smaller reads simply allocate
MAX = 4 << 20
PER_SIZE = 16
BUDGET = 48 << 20  # bytes kept in all


class SpareBuffers:
    def __init__(self) -> None:
        self._free: dict[int, list[bytearray]] = {}
        self._kept = 0

    def take(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes nobody else holds (contents undefined above MIN)."""
        if not MIN <= size <= MAX:
            return bytearray(size)
        kept = self._free.get(size)
        if kept is None:
            kept = self._free[size] = []
        for buf in kept:
            if getrefcount(buf) == 3:  # ``kept``, ``buf`` and the argument: ours alone
                return buf
        buf = bytearray(size)
        if len(kept) < PER_SIZE and self._kept + size <= BUDGET:
            kept.append(buf)
            self._kept += size
        return buf
