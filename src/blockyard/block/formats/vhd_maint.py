"""VHD info, check, compact and resize (image-formats.md §3, §7).

``check`` re-reads both footers, the dynamic header and the BAT: damaged or
differing footer copies are errors (repair rewrites both from the good one);
block-sized gaps between blocks and space after the last block are leaks
(repair and ``compact`` move the last blocks into the gaps and end the file
after the last block).  Every move copies first, syncs, then rewrites the BAT
entry and syncs again, so a crash leaves at worst a leak.  Resize moves blocks
out of the way when the BAT must grow, and keeps a valid footer at EOF at each
step.  These are maintenance operations: they hold the image's lock and stop
other I/O while they run.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from blockyard.block.formats import vhd_layout as V
from blockyard.block.formats.base import CheckReport, ImageInfo, Progress
from blockyard.block.formats.vdi_vhd_common import is_zero, plan_moves, pread_exact
from blockyard.errors import MediaError
from blockyard.util.aio import run_blocking

if TYPE_CHECKING:
    from blockyard.block.formats.vhd import VhdImage


def info(img: VhdImage) -> ImageInfo:
    f, d = img.footer, img.dyn
    hint, locators = V.parent_hint(d, img._read_sync) if d and img.is_diff else (None, [])
    c, h, s = f.geometry
    return ImageInfo(
        img.path, "vhd", V.TYPE_NAMES[f.disk_type], img.size, img._allocated_bytes(),
        uuid=V.guid_text(f.unique_id),
        parent_uuid=V.guid_text(d.parent_uuid) if d and img.is_diff else None,
        parent_hint=hint, geometry=f.geometry, block_size=d.block_size if d else None,
        dirty=False,
        extra={"creator": f"{f.creator_app.decode('latin-1')} "
                          f"{f.creator_version >> 16}.{f.creator_version & 0xFFFF}",
               "creator_os": f.creator_os.decode("latin-1"), "chs_size": c * h * s * 512,
               "original_size": f.original_size, "unique_id_hex": f.unique_id.hex(),
               "saved_state": f.saved_state, "parent_locators": locators,
               "problems": list(img.problems)})


def check(img: VhdImage, repair: bool = False) -> CheckReport:
    """Re-read footers, header and BAT from disk (unflushed metadata is published first)."""
    if not img.read_only and img._meta_dirty():
        img._publish_sync()
    report = CheckReport(img.path)
    found = findings(img, report)
    if not found or not repair:
        return report
    if img.read_only:
        report.errors.append("opened read-only: nothing repaired")
        return report
    if not img.fixed:
        os.pwrite(img.file.fd, img.footer.pack(), 0)  # the copy at 0 (§3.1)
    squeeze_sync(img)  # fills gaps, rewrites the trailing footer, drops the tail
    after = CheckReport(img.path)
    findings(img, after)
    report.errors, report.leaks = after.errors, after.leaks
    report.repaired = [f for f in found if f not in after.errors + after.leaks]
    return report


def findings(img: VhdImage, report: CheckReport) -> list[str]:
    try:
        img._load_state(*V.load(img.file.fd, img.path))
    except MediaError as exc:
        report.errors.append(str(exc))
        return []
    report.errors.extend(img.problems)
    if not img.fixed:
        scan, first = scan_blocks(img)
        holes = V.gaps(scan.live, img.stride, first)
        if holes:
            report.leaks.append(f"{len(holes)} block-sized gap(s) used by no block")
        if img._footer_pos - scan.end >= 512:
            report.leaks.append(f"{img._footer_pos - scan.end} bytes after the last block")
    return report.errors + report.leaks


def scan_blocks(img: VhdImage) -> tuple[V.BatScan, int]:
    assert img.dyn is not None
    first = V.meta_end(img.footer, img.dyn)
    return V.scan_bat(img.bat, img.stride, first, img._footer_pos), first


def squeeze_sync(img: VhdImage) -> None:
    """Move the last blocks into gaps (copies synced first), then end the file after them."""
    fd = img.file.fd
    scan, first = scan_blocks(img)
    moves = plan_moves([pos for pos, _b in scan.live], V.gaps(scan.live, img.stride, first))
    if moves:
        block_at = dict(scan.live)
        for src, dst in moves:
            os.pwrite(fd, pread_exact(fd, img.stride, src), dst)
        os.fdatasync(fd)
        for src, dst in moves:
            img._set_entry(block_at[src], dst // 512)
        img._write_bat_sync(img._dirty_bat)
        img._dirty_bat = set()
        os.fdatasync(fd)
        scan, first = scan_blocks(img)
    os.pwrite(fd, img.footer.pack(), scan.end)
    os.fdatasync(fd)
    os.ftruncate(fd, scan.end + 512)
    img._footer_pos = scan.end


async def compact(img: VhdImage, progress: Progress | None = None) -> int:
    """Free blocks that read as zeros (or hold no sector), then close the gaps."""
    if img.read_only or img.fixed:
        kind = "read-only" if img.read_only else "fixed"
        raise MediaError(f"{img.path}: cannot compact a {kind} VHD")
    before = img._allocated_bytes()
    total = len(img.bat)
    for block in range(total):
        if img.bat[block] != V.BAT_FREE:
            await drop_if_zero(img, block)
        if progress:
            progress(block + 1, total)
    async with img._lock, img._gate.exclusive():
        await run_blocking(img._publish_sync)
        await run_blocking(squeeze_sync, img)
    return max(0, before - img._allocated_bytes())


async def drop_if_zero(img: VhdImage, block: int) -> None:
    async with img._lock, img._gate.exclusive():
        where = img.bat[block] * 512
        bm = await img._bitmap(block)
        data = await img.file._pread(where + img._bm_bytes, img.block_size)
        runs = [(0, img.block_size, True)] if bm is None else V.runs(bm, 0, img.block_size)
        held = [(start, n) for start, n, isset in runs if isset]
        if held and (img.is_diff or not all(is_zero(data[a:a + n]) for a, n in held)):
            return  # in a differencing disk even zeros mask the parent
        img._set_entry(block, V.BAT_FREE)
        img._bitmaps.pop(block, None)
        img._dirty_bitmaps.discard(block)
        img._punch(where, img.stride)


async def resize(img: VhdImage, new_size: int, force: bool = False) -> None:
    if img.read_only or img.is_diff:
        kind = "read-only" if img.read_only else "differencing"
        raise MediaError(f"{img.path}: cannot resize a {kind} VHD")
    new_size = -(-new_size // 512) * 512
    if not 0 < new_size <= V.MAX_SIZE:  # §3.4
        raise MediaError(f"{img.path}: VHD disks hold 512 bytes to 2040 GiB, "
                         f"not {new_size} bytes")
    work = resize_fixed if img.fixed else resize_dynamic
    async with img._lock, img._gate.exclusive():
        await run_blocking(work, img, new_size, force)
    img.size = new_size


def new_size_footer(img: VhdImage, size: int) -> bytes:
    f = img.footer
    f.current_size = size
    f.cylinders, f.heads, f.sectors = V.chs(size // 512)
    return f.pack()


def resize_fixed(img: VhdImage, new: int, force: bool) -> None:
    fd, old = img.file.fd, img.size
    if new < old and not force and _has_data(fd, new, old):
        raise MediaError(f"{img.path}: shrinking to {new} bytes drops data; use force")
    os.pwrite(fd, new_size_footer(img, new), new)  # §7: the new footer first
    if new > old:
        os.pwrite(fd, bytes(512), old)  # the old footer becomes disk data: zeros
    os.ftruncate(fd, new + 512)
    os.fdatasync(fd)
    img._footer_pos = new


def resize_dynamic(img: VhdImage, new: int, force: bool) -> None:
    entries = -(-new // img.block_size)
    dropped = [b for b in range(entries, len(img.bat)) if img.bat[b] != V.BAT_FREE]
    if dropped and not force:
        raise MediaError(f"{img.path}: shrinking to {new} bytes drops {len(dropped)} "
                         "allocated block(s); use force")
    img._publish_sync()
    zero_past(img, min(new, img.size))
    for block in dropped:
        img._set_entry(block, V.BAT_FREE)
        img._bitmaps.pop(block, None)
    if entries > len(img.bat):
        grow_bat_sync(img, entries)
    img._publish_sync()
    fd = img.file.fd
    raw = new_size_footer(img, new)
    os.pwrite(fd, raw, img._footer_pos)  # trailing footer first, then the copy (§3.1)
    os.fdatasync(fd)
    os.pwrite(fd, raw, 0)
    os.fdatasync(fd)
    if dropped:
        squeeze_sync(img)


def zero_past(img: VhdImage, size: int) -> None:
    """Zero the rest of the block holding ``size`` so a later grow reads zeros."""
    block, inner = divmod(size, img.block_size)
    if inner and block < len(img.bat) and img.bat[block] != V.BAT_FREE:
        where = img.bat[block] * 512 + img._bm_bytes + inner
        os.pwrite(img.file.fd, bytes(img.block_size - inner), where)


def grow_bat_sync(img: VhdImage, entries: int) -> None:
    """Lengthen the BAT; blocks in its way move to the end first (each step crash safe)."""
    assert img.dyn is not None
    fd, d = img.file.fd, img.dyn
    need_end = d.table_offset + -(-4 * entries // 512) * 512
    scan, _first = scan_blocks(img)
    movers = [(pos, block) for pos, block in scan.live if pos < need_end]
    start = max(scan.end, need_end)
    footer_at = start + len(movers) * img.stride
    os.pwrite(fd, img.footer.pack(), footer_at)  # §7: EOF keeps a valid footer
    for i, (pos, _block) in enumerate(movers):
        os.pwrite(fd, pread_exact(fd, img.stride, pos), start + i * img.stride)
    os.fdatasync(fd)
    for i, (_pos, block) in enumerate(movers):
        img._set_entry(block, (start + i * img.stride) // 512)
    img._footer_pos = footer_at
    old = len(img.bat)
    img.bat.extend([V.BAT_FREE] * (entries - old))
    img._dirty_bat |= set(range(old // V.BAT_SECTOR_ENTRIES,
                                 -(-entries // V.BAT_SECTOR_ENTRIES)))
    img._write_bat_sync(img._dirty_bat)  # moved entries, then the new free ones
    img._dirty_bat = set()
    os.fdatasync(fd)
    d.max_entries = entries
    os.pwrite(fd, d.pack(), img.footer.data_offset)
    os.fdatasync(fd)


def _has_data(fd: int, start: int, end: int) -> bool:
    try:
        return os.lseek(fd, start, os.SEEK_DATA) < end
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False
        raise
