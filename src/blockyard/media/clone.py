"""Copying the whole visible disk into a new image, keeping it sparse.

``copy_visible(src, dst)`` walks ``src``'s extents window by window and
copies only what may hold data: an extent flagged ZERO is skipped (the new
image reads zeroes there already), and a data range is read in 1 MiB pieces
of which the all-zero 64 KiB grains are skipped too.  So a 1 TiB dynamic
disk with 1 MiB of data copies 1 MiB, from any format to any format: the
copy goes through the ``Layer`` API, not through file layouts.

A differencing chain is flattened: ``src`` is the chain as a client sees it
(``builder.open_visible``), whose extents are resolved through every parent
(block/chain.py), so the copy is a stand-alone image with a new UUID.
"""

from __future__ import annotations

from collections.abc import Callable

from blockyard.block.layer import ZERO, Layer
from blockyard.errors import MediaError

WINDOW = 64 << 20  # extents asked per call
PIECE = 1 << 20  # bytes read per call
GRAIN = 64 << 10  # all-zero pieces this big are left out (the new image reads zeros there)
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
        data = memoryview(await src.pread(offset, n)).cast("B")
        for start, stop in _nonzero_runs(data):
            await dst.pwrite(offset + start, data[start:stop])
            written += stop - start
        offset += n
    return written


def _nonzero_runs(data: memoryview) -> list[tuple[int, int]]:
    """[start, stop) runs of ``data`` whose GRAIN-sized pieces are not all zero."""
    runs: list[tuple[int, int]] = []
    zeros = memoryview(_ZEROES)
    for start in range(0, len(data), GRAIN):
        stop = min(start + GRAIN, len(data))
        if data[start:stop] == zeros[:stop - start]:
            continue
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], stop)
        else:
            runs.append((start, stop))
    return runs
