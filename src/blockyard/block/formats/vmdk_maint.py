"""VMDK check and compact (image-formats.md §2.3, §2.4, §7).

``check`` runs after ``open`` has already refused anything that would make
reads wrong (pointers past EOF, overlapping structures, two GTEs on one
grain: ``vmdk_layout.check_layout``).  What is left to find:

* redundant GD/GT differing from the primary (after a crash between the two
  writes, §7) -- an error; repair copies the primary over the redundant copy;
* a redundant directory that is unusable (entries missing or past EOF) --
  an error, not repaired;
* compressed grains that do not inflate or carry the wrong LBA -- errors;
* leaked space: ranges of 4 KiB or more past the overhead that no GD, GT or
  GTE names -- leaks; repair truncates a leaked tail (nothing references it),
  ``compact`` reclaims the rest;
* the uncleanShutdown flag -- repair clears it once the above is consistent;
* a FLAT extent file shorter than its extent line -- an error.

``compact`` drops grains that read as zeros and moves the last grains into
the holes, then truncates.  Crash order: copies go to unreferenced space,
``fdatasync``, then the GTEs (GT, then RGT), ``fdatasync``, then truncate.
Compact and resize are offline operations: run them with no I/O in flight.
"""

from __future__ import annotations

import os
import zlib
from typing import TYPE_CHECKING

from blockyard.block.formats.base import CheckReport, Progress
from blockyard.block.formats.vmdk_descriptor import Descriptor
from blockyard.block.formats.vmdk_extent import SECTOR, FlatExtent
from blockyard.block.formats.vmdk_layout import used_regions as layout_used_regions
from blockyard.block.formats.vmdk_sparse import ALIGN, GRAIN_MARKER, SparseExtent, le_bytes
from blockyard.errors import MediaError

if TYPE_CHECKING:
    from blockyard.block.formats.vmdk import VmdkImage

LEAK_MIN = 4096


def check_image(img: VmdkImage, repair: bool) -> CheckReport:
    report = CheckReport(img.path)
    for e in img.extents_:
        if isinstance(e, SparseExtent):
            check_sparse(e, report, repair and not img.read_only)
        else:
            e.check(report, repair)
    parent_desc = getattr(img.parent, "desc", None)
    if img.desc.is_child and isinstance(parent_desc, Descriptor):
        parent_cid = parent_desc.cid
        if parent_cid != img.desc.parent_cid:
            report.errors.append(f"{img.path}: parentCID {img.desc.parent_cid:08x} does not "
                                 f"match the parent's CID {parent_cid:08x} (§2.1)")
    return report


def check_sparse(e: SparseExtent, report: CheckReport, repair: bool) -> None:
    if e.h.compressed:
        _check_compressed(e, report)
        return
    ok = _check_redundant(e, report, repair)
    _check_leaks(e, report, repair)
    if e.dirty_at_open and repair and ok and not e.marked:
        assert e.raw is not None
        e.h.unclean_shutdown = 0
        os.pwrite(e.raw.fd, e.h.build(), 0)
        os.fdatasync(e.raw.fd)
        e.dirty_at_open = False
        report.repaired.append(f"{e.path}: cleared the unclean-shutdown flag")


def _check_compressed(e: SparseExtent, report: CheckReport) -> None:
    assert e.raw is not None
    fd, limit = e.raw.fd, 2 * e.grain + 1024
    for i, gt in sorted(e.t.gts.items()):
        for j, v in enumerate(gt):
            if not e.is_data(v):
                continue
            g = i * e.n + j
            lba, size = GRAIN_MARKER.unpack(os.pread(fd, 12, v * SECTOR).ljust(12, b"\0"))
            problem = None
            if lba != g * e.h.grain_size:
                problem = f"marker LBA {lba}, expected {g * e.h.grain_size}"
            elif not 0 < size <= limit:
                problem = f"compressed size {size} out of range"
            else:
                try:
                    d = zlib.decompressobj()
                    d.decompress(os.pread(fd, size, v * SECTOR + 12), e.grain)
                    if d.unconsumed_tail:
                        problem = "inflates past the grain size"
                except zlib.error as exc:
                    problem = f"does not inflate: {exc}"
            if problem:
                report.errors.append(f"{e.path}: grain {g} at sector {v}: {problem}")


def _check_redundant(e: SparseExtent, report: CheckReport, repair: bool) -> bool:
    t, h = e.t, e.h
    if t.rgd is None:
        return True
    if not t.rgt_ok:
        report.errors.append(f"{e.path}: redundant grain directory is unusable (entries "
                             "missing where the GD has tables, or past the end of the file)")
        return False
    assert e.raw is not None
    fd, nbytes, clean = e.raw.fd, h.gt_sectors * SECTOR, True
    for i, sector in enumerate(t.gd):
        if not sector or i in e.new_gts:
            continue
        primary = os.pread(fd, nbytes, sector * SECTOR)
        if os.pread(fd, nbytes, t.rgd[i] * SECTOR) == primary:
            continue
        clean = False
        report.errors.append(f"{e.path}: redundant grain table {i} differs from the primary")
        if repair:
            os.pwrite(fd, primary, t.rgd[i] * SECTOR)
            report.repaired.append(f"{e.path}: copied grain table {i} over its redundant copy")
    if repair and not clean:
        os.fdatasync(fd)
    return clean or repair


def used_regions(e: SparseExtent) -> list[tuple[int, int]]:
    return layout_used_regions(e.h, e.t)


def _check_leaks(e: SparseExtent, report: CheckReport, repair: bool) -> None:
    assert e.raw is not None
    size = os.fstat(e.raw.fd).st_size
    pos, leaked = e.h.overhead * SECTOR, []
    for a, b in used_regions(e):
        if a - pos >= LEAK_MIN:
            leaked.append((pos, a))
        pos = max(pos, b)
    for a, b in leaked:
        report.leaks.append(f"{e.path}: {b - a} bytes at offset {a} are referenced by nothing")
    if size - pos < LEAK_MIN:
        return
    report.leaks.append(f"{e.path}: {size - pos} bytes at the end of the file are referenced "
                        "by nothing")
    if repair and not e.new_gts and not e.dirty:
        end = -(-pos // SECTOR) * SECTOR
        os.ftruncate(e.raw.fd, end)
        e.next_free = -(-end // ALIGN) * ALIGN
        e.free.clear()
        e.freed.clear()
        report.repaired.append(f"{e.path}: truncated the leaked tail to {end} bytes")


# ---- compact ------------------------------------------------------------------------------
async def compact_image(img: VmdkImage, progress: Progress | None) -> int:
    if img.read_only:
        raise MediaError(f"{img.path}: opened read-only, cannot compact")
    before = sum(e.allocated_bytes() for e in img.extents_)
    if not img._changed:
        await img._touch()
    await img.flush()
    total = max(1, img.size)
    for e in img.extents_:
        def step(done: int, _total: int, start: int = e.start) -> None:
            if progress:
                progress(start + done, total)
        if isinstance(e, SparseExtent):
            await compact_sparse(e, step)
        elif isinstance(e, FlatExtent):
            await _compact_flat(e, step)
    await img.flush()
    return max(0, before - sum(e.allocated_bytes() for e in img.extents_))


async def _compact_flat(e: FlatExtent, step: Progress) -> None:
    chunk = 1 << 16
    for off in range(0, e.size, chunk):
        n = min(chunk, e.size - off)
        if not any(await e.read(off, n)):
            await e.zero(off, n, True)
        step(off + n, e.size)


async def compact_sparse(e: SparseExtent, step: Progress) -> None:
    async with e.lock:
        await e._publish()
        await _drop_zero_grains(e, step)
        await e._publish()  # dropped grains are unreferenced on disk before reuse
        moved = await _relocate(e)
        await e._publish()
        assert e.raw is not None
        end = max([e.h.overhead * SECTOR] + [b for _a, b in used_regions(e)])
        end = -(-end // SECTOR) * SECTOR
        if moved or end < os.fstat(e.raw.fd).st_size:
            os.ftruncate(e.raw.fd, end)
            await e.raw._flush()
        e.next_free = -(-end // ALIGN) * ALIGN
        e.free.clear()
        e.freed.clear()


async def _drop_zero_grains(e: SparseExtent, step: Progress) -> None:
    assert e.raw is not None
    for i, gt in sorted(e.t.gts.items()):
        for j, v in enumerate(gt):
            g = i * e.n + j
            if e.is_data(v) and not any(await e.raw._pread(v * SECTOR, e.grain)):
                if e.backing is None:
                    e._set_gte(g, 0)
                elif e.h.zero_grain:
                    e._set_gte(g, 1)
                else:
                    continue  # a child must keep the zeros that mask its parent
                await e.raw._trim(v * SECTOR, e.grain, False)
            step(min(e.size, (g + 1) * e.grain), e.size)


async def _relocate(e: SparseExtent) -> int:
    """Move the last grains into holes past the overhead; GTEs change in memory."""
    assert e.raw is not None
    holes, pos = [], e.h.overhead * SECTOR
    for a, b in used_regions(e):
        if a - pos >= e.grain:
            holes.append([pos, a])
        pos = max(pos, b)
    where = {v: (i, j) for i, gt in e.t.gts.items() for j, v in enumerate(gt) if e.is_data(v)}
    moved = 0
    for v in sorted(where, reverse=True):
        hole = next((x for x in holes if x[1] - x[0] >= e.grain), None)
        if hole is None or hole[0] >= v * SECTOR:
            break
        data = await e.raw._pread(v * SECTOR, e.grain)
        await e.raw._pwrite(hole[0], data, False)
        i, j = where[v]
        e._set_gte(i * e.n + j, hole[0] // SECTOR)
        hole[0] += e.grain
        moved += 1
    return moved


def write_gd(e: SparseExtent) -> None:
    """Rewrite the whole GD and RGD from memory (used by resize)."""
    assert e.raw is not None
    os.pwrite(e.raw.fd, le_bytes(e.t.gd), e.h.gd_offset * SECTOR)
    if e.t.rgd is not None and e.t.rgt_ok:
        os.pwrite(e.raw.fd, le_bytes(e.t.rgd), e.h.rgd_offset * SECTOR)
