"""Parallels create, check, compact and resize (image-formats.md §4.1, §7).

create: ``variant="dynamic"`` only.  Options: ``cluster_size`` (bytes,
multiple of 512, default 1 MiB like qemu; VirtualBox itself uses 63
sectors), ``magic`` = ``"v1"`` (``WithoutFreeSpace``, default: the magic
VirtualBox opens, §4.1) or ``"ext"`` (``WithouFreSpacExt``, qemu's).

check: what ``open`` already refuses (pointers below the data area, past
EOF, shared) cannot be present.  Left to report: clusters not aligned to the
data area (parallels.txt requires it; VirtualBox can produce them) --
errors; space no BAT entry names -- leaks (repair truncates a leaked tail,
as qemu does); the in-use mark -- repair clears it.

compact: unmaps all-zero clusters, moves the last clusters into holes
(copy, ``fdatasync``, BAT, ``fdatasync``), truncates.  Offline only.

resize: grow when the BAT area before the data has room, else first move
the clusters in the way to the end of the file; shrink refuses to drop data
unless ``force``.  The header (entries, size, data offset) is one write
made after everything it depends on is durable.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from blockyard.block.formats import parallels_layout as pl
from blockyard.block.formats.base import CheckReport, Progress
from blockyard.block.layer import HOLE, ZERO
from blockyard.errors import MediaError
from blockyard.util.units import parse_size

if TYPE_CHECKING:
    from blockyard.block.formats.parallels import ParallelsImage

SECTOR = pl.SECTOR
MAGICS = {"v1": pl.MAGIC_V1, "ext": pl.MAGIC_EXT}


def create(cls: type[ParallelsImage], path: str, size: int, variant: str,
           **opts: Any) -> ParallelsImage:
    if variant != "dynamic":
        raise MediaError(f"{path}: Parallels images are created expandable ('dynamic'); "
                         "a fixed Parallels disk is a raw file")
    unknown = set(opts) - {"cluster_size", "magic"}
    if unknown:
        raise MediaError(f"{path}: unknown Parallels option(s): {', '.join(sorted(unknown))}")
    cluster = parse_size(opts.get("cluster_size", 1 << 20))
    if cluster <= 0 or cluster % SECTOR or cluster // SECTOR > pl.MAX_TRACKS:
        raise MediaError(f"{path}: cluster size {cluster} is not a positive multiple of 512")
    magic = MAGICS.get(str(opts.get("magic", "v1")))
    if magic is None:
        raise MediaError(f"{path}: magic must be one of {', '.join(MAGICS)}")
    size = -(-size // SECTOR) * SECTOR
    if magic == pl.MAGIC_V1 and size // SECTOR >= 1 << 32:
        raise MediaError(f"{path}: WithoutFreeSpace images stop below 2 TiB; use magic=ext")
    h = pl.new_header(size, cluster, magic)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise MediaError(f"{path}: already exists") from None
    except OSError as exc:
        raise MediaError(f"{path}: cannot create: {exc.strerror}") from None
    try:
        os.pwrite(fd, h.build(), 0)
        os.ftruncate(fd, h.data_off * SECTOR)  # the BAT: all zero
        os.fsync(fd)
    finally:
        os.close(fd)
    return cls.open(path)


# ---- check --------------------------------------------------------------------------------
def used(img: ParallelsImage) -> list[int]:
    """Sorted first sectors of every cluster in use."""
    return sorted(v * img.h.unit for v in img.bat if v)


def check(img: ParallelsImage, repair: bool) -> CheckReport:
    report = CheckReport(img.path)
    h, start = img.h, pl.data_start(img.h)
    for i, v in enumerate(img.bat):
        if v and (v * h.unit - start) % h.tracks:
            report.errors.append(f"{img.path}: BAT entry {i} (sector {v * h.unit}) is not "
                                 "aligned to the clusters of the data area")
    _leaks(img, report, repair)
    if img.dirty_at_open and repair and not img.read_only and not img.marked:
        img.h.inuse = pl.CLOSED
        os.pwrite(img.raw.fd, img.h.build(), 0)
        os.fdatasync(img.raw.fd)
        img.dirty_at_open = False
        report.repaired.append(f"{img.path}: cleared the in-use mark")
    return report


def _leaks(img: ParallelsImage, report: CheckReport, repair: bool) -> None:
    h, pos = img.h, pl.data_start(img.h)
    for sector in used(img):
        if sector > pos:
            report.leaks.append(f"{img.path}: {(sector - pos) * SECTOR} bytes at offset "
                                f"{pos * SECTOR} are referenced by no BAT entry")
        pos = max(pos, sector + h.tracks)
    size = os.fstat(img.raw.fd).st_size
    if size <= pos * SECTOR:
        return
    report.leaks.append(f"{img.path}: {size - pos * SECTOR} bytes at the end of the file are "
                        "referenced by no BAT entry")
    if repair and not img.read_only and not img.dirty_sectors:
        os.ftruncate(img.raw.fd, pos * SECTOR)
        img.next_free = pos
        img.free.clear()
        img.freed.clear()
        report.repaired.append(f"{img.path}: truncated the leaked tail")


# ---- compact ------------------------------------------------------------------------------
async def compact(img: ParallelsImage, progress: Progress | None) -> int:
    before = os.fstat(img.raw.fd).st_blocks * SECTOR
    if not img.marked:
        await img._touch()
    async with img.lock:
        await img._publish()
        for c in range(len(img.bat)):
            fo = img._where(c)
            if fo and not any(await img.raw._pread(fo, img.cluster)):
                img._set(c, 0)
                await img.raw._trim(fo, img.cluster, False)
            if progress:
                progress(min(img.size, (c + 1) * img.cluster), img.size)
        await img._publish()  # dropped clusters are unreferenced on disk before reuse
        await _relocate(img)
        await img._publish()
        end = max([pl.data_start(img.h)] + [s + img.h.tracks for s in used(img)])
        os.ftruncate(img.raw.fd, end * SECTOR)
        await img.raw._flush()
        img.next_free = end
        img.free.clear()
        img.freed.clear()
    return max(0, before - os.fstat(img.raw.fd).st_blocks * SECTOR)


async def _relocate(img: ParallelsImage) -> None:
    t = img.h.tracks
    owner = {v * img.h.unit: c for c, v in enumerate(img.bat) if v}
    slots: list[int] = []
    pos = pl.data_start(img.h)
    for sector in sorted(owner):
        slots += range(pos, sector, t) if (sector - pos) % t == 0 else []
        pos = sector + t
    for sector in sorted(owner, reverse=True):
        if not slots or slots[0] >= sector:
            break
        target = slots.pop(0)
        data = await img.raw._pread(sector * SECTOR, img.cluster)
        await img.raw._pwrite(target * SECTOR, data, False)
        img._set(owner[sector], target // img.h.unit)


# ---- resize -------------------------------------------------------------------------------
async def resize(img: ParallelsImage, new_size: int, force: bool) -> None:
    h = img.h
    new = -(-new_size // SECTOR) * SECTOR
    if not h.ext and new // SECTOR >= 1 << 32:
        raise MediaError(f"{img.path}: WithoutFreeSpace images stop below 2 TiB")
    if new == img.size:
        return
    pos = new
    while not force and pos < img.size:  # extents() may answer for less than asked
        for x in await img.extents(pos, img.size - pos):
            if not x.flags & (HOLE | ZERO):
                raise MediaError(f"{img.path}: data lies past the new size {new}; shrinking "
                                 "would lose it (pass --force)")
            pos += x.length
    if not img.marked:
        await img._touch()
    entries = -(-(new // SECTOR) // h.tracks)
    async with img.lock:
        await img._publish()
        old = len(img.bat)
        if entries > old:
            await _make_room(img, entries)
            img.bat.extend([0] * (entries - old))
            for c in range(old, entries):  # stale entries from an earlier shrink
                img.dirty_sectors.add((pl.HEADER_SIZE + 4 * c) // SECTOR)
        else:
            for c in range(entries, len(img.bat)):
                if img.bat[c]:
                    img._set(c, 0)
            del img.bat[entries:]
        await img._publish()
        h.bat_entries, h.nb_sectors = entries, new // SECTOR
        h.cylinders = h.nb_sectors // (16 * 63)
        await img.raw._pwrite(0, h.build(), False)
        await img.raw._flush()
    img.size = new


async def _make_room(img: ParallelsImage, entries: int) -> None:
    """Grow the BAT area to ``entries``: move clusters in the way to the end."""
    h = img.h
    start = pl.data_start(h)
    bat_end = -(-(pl.HEADER_SIZE + 4 * entries) // SECTOR)
    if bat_end <= start:
        return
    need = start + -(-(bat_end - start) // h.tracks) * h.tracks  # keeps cluster alignment
    for c, v in enumerate(img.bat):
        if v and v * h.unit < need:
            data = await img.raw._pread(v * h.unit * SECTOR, img.cluster)
            sector = max(img.next_free, need)
            img.next_free = sector + h.tracks
            await img.raw._pwrite(sector * SECTOR, data, False)
            img._set(c, sector // h.unit)
    img.free = [s for s in img.free if s >= need]
    await img._publish()  # moved clusters durable and the BAT names the copies
    old_bytes = pl.HEADER_SIZE + 4 * len(img.bat)
    await img.raw._pwrite(old_bytes, bytes(need * SECTOR - old_bytes), False)
    h.data_off = need
    img.next_free = max(img.next_free, need)
