"""A RAM disk: the reference leaf layer for tests.

Tracks allocation per 4 KiB page so that extents, trim and zero behave like a
sparse file: a trimmed or never-written page is a hole that reads as zeroes.
"""

from __future__ import annotations

from blockyard.block.layer import HOLE, ZERO, Buffer, Extent, Layer

PAGE = 4096


class RamDisk(Layer):
    def __init__(self, size: int, *, read_only: bool = False) -> None:
        super().__init__()
        self.size = size
        self.read_only = read_only
        self.data = bytearray(size)
        self.allocated = bytearray((size + PAGE - 1) // PAGE)  # 1 = page has data
        self.flushes = 0

    can_flush = True  # type: ignore[assignment]
    can_fua = True  # type: ignore[assignment]
    can_trim = True  # type: ignore[assignment]
    can_fast_zero = True  # type: ignore[assignment]
    can_multi_conn = True  # type: ignore[assignment]
    can_extents = True  # type: ignore[assignment]

    async def _pread(self, offset: int, length: int) -> Buffer:
        return bytes(self.data[offset:offset + length])

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        self.data[offset:offset + len(data)] = data
        for p in range(offset // PAGE, (offset + len(data) + PAGE - 1) // PAGE):
            self.allocated[p] = 1

    async def _flush(self) -> None:
        self.flushes += 1

    async def _trim(self, offset: int, length: int, fua: bool) -> None:
        await self._zero(offset, length, True, False, fua)

    async def _zero(self, offset: int, length: int, may_trim: bool, fast: bool,
                    fua: bool) -> None:
        self.data[offset:offset + length] = bytes(length)
        if may_trim:  # only whole pages become holes, as with punched files
            first, last = -(-offset // PAGE), (offset + length) // PAGE
            for p in range(first, last):
                self.allocated[p] = 0

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        out: list[Extent] = []
        end = offset + length
        pos = offset
        while pos < end:
            page = pos // PAGE
            state = self.allocated[page]
            nxt = min((page + 1) * PAGE, end)
            while nxt < end and self.allocated[nxt // PAGE] == state:
                nxt = min(nxt + PAGE, end)
            flags = 0 if state else HOLE | ZERO
            if out and out[-1].flags == flags:
                out[-1] = Extent(out[-1].length + nxt - pos, flags)
            else:
                out.append(Extent(nxt - pos, flags))
            pos = nxt
        return out
