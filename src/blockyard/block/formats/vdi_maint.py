"""VDI info, check, compact and resize (image-formats.md §1, §7).

``check`` re-reads header and map from the file (publishing unflushed
metadata first) and reports what ``vdi_layout.scan_map`` finds: a counter
that disagrees with the map is an error (``qemu-img check`` counts it as a
corruption), unused slots and bytes past the last slot are leaks.  Repair
moves the last blocks into unused slots, rewrites the counter and truncates:
each move is copied and synced before the map names it.  Compact frees every
block that reads as zeros (zero-marked in a differencing image, free in a
base image) and then does the same moves.  Resize refuses fixed and
differencing images (as VirtualBox does); growing past the room the map has
moves the map into the first data slots (``move_map_sync``).  These are
maintenance operations: they hold the image's lock and stop other I/O.
"""

from __future__ import annotations

import os
from array import array
from typing import TYPE_CHECKING

from blockyard.block.formats import vdi_layout as L
from blockyard.block.formats.base import CheckReport, ImageInfo, Progress
from blockyard.block.formats.vdi_vhd_common import is_zero
from blockyard.errors import MediaError
from blockyard.util.aio import run_blocking

if TYPE_CHECKING:
    from blockyard.block.formats.vdi import VdiImage


def info(img: VdiImage) -> ImageInfo:
    h = img.h
    link = h.uuid_link if h.uuid_link != L.NULL_UUID else None
    return ImageInfo(
        img.path, "vdi", L.TYPE_NAMES[h.image_type], img.size, img._allocated_bytes(),
        uuid=str(h.uuid_image), modification_uuid=str(h.uuid_modification),
        parent_uuid=str(link) if link else None, geometry=geometry(img),
        block_size=h.block_size, dirty=img.dirty,
        extra={"header_size": h.header_size, "blocks_total": h.blocks_total,
               "blocks_allocated": img._next_slot, "block_extra": h.block_extra,
               "parent_modification_uuid": str(h.uuid_parent_modification) if link else None,
               "comment": h.comment.split(b"\0", 1)[0].decode("utf-8", "replace")})


def geometry(img: VdiImage) -> tuple[int, int, int]:
    lchs = img.h.lchs
    if lchs and lchs["cylinders"] and lchs["heads"] and lchs["sectors"]:
        return lchs["cylinders"], lchs["heads"], lchs["sectors"]
    return min(16383, img.size // 512 // (16 * 63)), 16, 63  # §6.1 default


def check(img: VdiImage, repair: bool = False) -> CheckReport:
    """Scan header and map as they are on disk (unflushed metadata is published first)."""
    if not img.read_only and img._meta_dirty():
        img._publish_sync()
        img._squeeze_sync(None)  # what a flush would move, all of it
    report = CheckReport(img.path)
    found = findings(img, report)
    if not found or not repair:
        return report
    if img.read_only:
        report.errors.append("opened read-only: nothing repaired")
        return report
    img._squeeze_sync(None)  # fixes the counter, fills unused slots, drops the tail
    after = CheckReport(img.path)
    findings(img, after)
    report.errors, report.leaks = after.errors, after.leaks
    report.repaired = [f for f in found if f not in after.errors + after.leaks]
    return report


def findings(img: VdiImage, report: CheckReport) -> list[str]:
    try:
        h, bmap, scan = L.read_image(img.file.fd, img.path)
    except MediaError as exc:
        report.errors.append(str(exc))
        return []
    if scan.referenced != h.blocks_allocated and not img.fixed:  # as qemu-img check
        report.errors.append(f"blocks-allocated counter is {h.blocks_allocated}, "
                             f"the map references {scan.referenced} blocks")
    if scan.holes:
        report.leaks.append(f"{len(scan.holes)} block slot(s) in the file used by no block")
    if scan.tail_bytes:
        report.leaks.append(f"{scan.tail_bytes} bytes past the last block slot")
    img._load_state(h, bmap, scan)
    return report.errors + report.leaks


async def compact(img: VdiImage, progress: Progress | None = None) -> int:
    """Free every all-zero block, then move blocks down and truncate (§1.3)."""
    if img.read_only or img.fixed:
        kind = "read-only" if img.read_only else "fixed"
        raise MediaError(f"{img.path}: cannot compact a {kind} VDI image")
    before = img._allocated_bytes()
    total = img.h.blocks_total
    for block in range(total):
        if img.bmap[block] < L.BLOCK_ZERO:
            await drop_if_zero(img, block)
        if progress:
            progress(block + 1, total)
    async with img._lock:
        await run_blocking(img._publish_sync)
        async with img._gate.exclusive():
            await run_blocking(img._squeeze_sync, None)
    return max(0, before - img._allocated_bytes())


async def drop_if_zero(img: VdiImage, block: int) -> None:
    async with img._lock, img._gate.exclusive():
        where = img._where(block)
        if where is None or not is_zero(await img.file._pread(where, img.block_size)):
            return
        img._pending.append(img.bmap[block])
        img._set_entry(block, L.BLOCK_ZERO if img.is_diff else L.BLOCK_FREE)
        img._punch(where, img.block_size)


async def resize(img: VdiImage, new_size: int, force: bool = False) -> None:
    if img.read_only or img.fixed or img.is_diff:
        kind = "read-only" if img.read_only else L.TYPE_NAMES[img.h.image_type]
        raise MediaError(f"{img.path}: cannot resize a {kind} VDI image")
    new_size = -(-new_size // 512) * 512
    total = -(-new_size // img.block_size)
    if new_size <= 0 or total > L.MAX_BLOCKS:
        raise MediaError(f"{img.path}: cannot resize a VDI image to {new_size} bytes")
    async with img._lock, img._gate.exclusive():
        await run_blocking(resize_sync, img, new_size, total, force)


def resize_sync(img: VdiImage, new_size: int, total: int, force: bool) -> None:
    h = img.h
    dropped = [b for b in range(total, h.blocks_total) if img.bmap[b] < L.BLOCK_ZERO]
    if dropped and not force:
        raise MediaError(f"{img.path}: shrinking to {new_size} bytes drops "
                         f"{len(dropped)} allocated block(s); use force")
    zero_past(img, min(new_size, img.size))
    img._publish_sync()
    if total > (h.offset_data - h.offset_blocks) // 4:
        move_map_sync(img, total)
    img._pending += [img.bmap[b] for b in dropped]
    if total < h.blocks_total:
        del img.bmap[total:]
    grown = range(h.blocks_total, total)
    img.bmap.extend([L.BLOCK_FREE] * len(grown))
    img._dirty_sectors |= {b // L.MAP_SECTOR_ENTRIES for b in grown}
    img._write_meta_sync()  # new entries read "free" before the header counts them
    h.disk_size, h.blocks_total = new_size, total
    img._header_dirty = True
    img._publish_sync()
    img._squeeze_sync(None)
    img.size = new_size


def zero_past(img: VdiImage, size: int) -> None:
    """Zero the rest of the block holding ``size`` so a later grow reads zeros."""
    block, inner = divmod(size, img.block_size)
    if inner and block < len(img.bmap) and img.bmap[block] < L.BLOCK_ZERO:
        n = img.block_size - inner
        os.pwrite(img.file.fd, bytes(n), img.h.slot_offset(img.bmap[block]) + inner)


def move_map_sync(img: VdiImage, total: int) -> None:
    """Make room for a longer map: move it into the first data slots (crash safe).

    The first k slots are copied to the end and published (old layout), the
    new map is written into the space they left, and one header write
    switches to the new layout: offset_data grows by k slots, slot numbers
    shrink by k.
    """
    h = img.h
    img._squeeze_sync(None)
    k = -(-4 * total // h.stride)
    n = img._next_slot
    moves = [(s, max(n, k) + s) for s in range(min(k, n))]
    rev = {slot: blk for blk, slot in enumerate(img.bmap) if slot < L.BLOCK_ZERO}
    L.copy_slots(img.file.fd, h, moves)
    os.fdatasync(img.file.fd)
    for src, dst in moves:
        img._set_entry(rev[src], dst)
    img._next_slot = h.blocks_allocated = max(n, k) + min(k, n)
    img._header_dirty = True
    img._write_meta_sync()  # old layout again, slots 0..k-1 unused
    h.offset_blocks, h.offset_data = h.offset_data, h.offset_data + k * h.stride
    img.bmap = array("I", (s - k if s < L.BLOCK_ZERO else s for s in img.bmap))
    img._next_slot = h.blocks_allocated = img._next_slot - k
    img._dirty_sectors = set(range(-(-len(img.bmap) // L.MAP_SECTOR_ENTRIES)))
    img._write_meta_sync()  # the header write switches layouts
