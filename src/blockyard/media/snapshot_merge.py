"""Copying a differencing image's own blocks down into its parent (snapshot delete).

Deleting a snapshot merges the differencing image that follows it (the
*child*) into the image that holds the snapshot (the *parent*, VirtualBox
user manual §5.5): every range the child holds -- data, or zeros that mask
the parent (a VDI zero block, a VMDK zeroed grain) -- is written into the
parent; ranges the child does not hold are left alone, since the parent
already shows there what the child showed.  Afterwards the parent reads,
on its own, exactly what the child read; the child can be dropped.

What "holds" means comes from the child image's *own* extents (not the
chain's): a bare ``HOLE`` is "not here, ask the parent", anything else is
held -- ``ZERO`` flagged ranges as zeros, the rest as data.  Granularity is
the child's (VDI block, VMDK grain, VHD sector), so no byte the child does
not hold is ever copied.

While the child is masked by itself nothing a client reads changes, which
is why the copy may run while clients read and write the chain; the ranges
they write meanwhile are copied again at the end (``SwapLayer.track``).

Space: the merge needs room only for the child's ranges the parent does
not have allocated yet (``needed_bytes``); ``free_space`` is what the
parent's file system offers (a function so tests can shrink it).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from blockyard.block.chain import own_extents
from blockyard.block.formats.vdi_vhd_common import is_zero
from blockyard.block.layer import HOLE, ZERO, Layer

PIECE = 1 << 20
Range = tuple[int, int]
Progress = Callable[[int, int], None]


async def held_runs(img: Layer, ranges: list[Range]) -> list[tuple[int, int, bool]]:
    """(offset, length, zeros) of the ranges ``img`` holds itself, within ``ranges``."""
    runs: list[tuple[int, int, bool]] = []
    for offset, length in ranges:
        pos = offset
        for e in await own_extents(img, offset, length):
            if e.flags != HOLE:
                runs.append((pos, e.length, bool(e.flags & ZERO)))
            pos += e.length
    return runs


async def needed_bytes(child: Layer, parent: Layer) -> int:
    """Bytes of child data the parent has no allocated space for yet."""
    need = 0
    for offset, length, zeros in await held_runs(child, [(0, child.size)]):
        if zeros:
            continue
        end = min(offset + length, parent.size)
        for e in await own_extents(parent, offset, max(0, end - offset)):
            if e.flags & HOLE:
                need += e.length
    return need


def free_space(path: str) -> int:
    """Bytes an unprivileged writer may still allocate on the file system of ``path``."""
    st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    return st.f_bavail * st.f_frsize


async def copy_down(child: Layer, parent: Layer, ranges: list[Range] | None = None,
                    progress: Progress | None = None) -> int:
    """Write what ``child`` holds in ``ranges`` (default: all) into ``parent``; bytes copied."""
    runs = await held_runs(child, ranges if ranges is not None else [(0, child.size)])
    total = sum(n for _o, n, _z in runs)
    done = 0
    for offset, length, zeros in runs:
        end = offset + length
        pos = offset
        while pos < end:
            n = min(PIECE - pos % PIECE, end - pos)
            data = None if zeros else await child.pread(pos, n)
            if data is None or is_zero(data):
                await parent.zero(pos, n)  # zeros the child holds mask the parent's data
            else:
                await parent.pwrite(pos, data)
            pos += n
            done += n
            if progress:
                progress(done, total)
    if progress and not runs:
        progress(0, 0)
    return done
