"""Copying the whole visible disk into a new image, keeping it sparse.

``copy_visible(src, dst)`` walks ``src``'s extents window by window and
copies only what may hold data: an extent flagged ZERO is skipped (the new
image reads zeroes there already), and a data range is read in 1 MiB pieces
of which the all-zero ones are skipped too.  So a 1 TiB dynamic disk with
1 MiB of data copies 1 MiB, from any format to any format: the copy goes
through the ``Layer`` API, not through file layouts.
"""

from __future__ import annotations

from collections.abc import Callable

from blockyard.block.layer import ZERO, Layer
from blockyard.errors import MediaError

WINDOW = 64 << 20  # extents asked per call
PIECE = 1 << 20  # bytes read per call
_ZEROES = bytes(PIECE)


async def copy_visible(src: Layer, dst: Layer,
                       progress: Callable[[int, int], None] | None = None) -> int:
    """Copy ``src`` into the fresh (all-zero) ``dst``; returns bytes written."""
    if dst.size < src.size:
        raise MediaError(f"the new image holds {dst.size} bytes, fewer than {src.size}")
    pos, written, size = 0, 0, src.size
    while pos < size:
        for ext in await src.extents(pos, min(WINDOW, size - pos)):
            if not ext.flags & ZERO:
                written += await _copy_range(src, dst, pos, ext.length)
            pos += ext.length
        if progress:
            progress(pos, size)
    await dst.flush()
    return written


async def _copy_range(src: Layer, dst: Layer, offset: int, length: int) -> int:
    written, end = 0, offset + length
    while offset < end:
        n = min(PIECE, end - offset)
        data = await src.pread(offset, n)
        if memoryview(data) != memoryview(_ZEROES)[:n]:
            await dst.pwrite(offset, data)
            written += n
        offset += n
    return written
