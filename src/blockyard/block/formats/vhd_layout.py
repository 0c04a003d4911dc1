"""VHD on-disk layout: BAT, sector bitmaps, and loading an image (image-formats.md §3).

The footer and dynamic header (structures, checksums, checks, CHS geometry)
are in ``vhd_headers``; this module re-exports them, so drivers and tests
reach the whole layout as ``vhd_layout``.  ``load`` reads an image's
footer(s), dynamic header and BAT and checks every BAT entry against the
file before the driver trusts it.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass
from sys import byteorder
from typing import Any

from blockyard.block.formats.vhd_headers import (
    BAT_FREE,
    CREATOR_APP,
    CREATOR_OS,
    CREATOR_VERSION,
    DEFAULT_BLOCK_SIZE,
    DIFF,
    DYN_HEADER,
    DYNAMIC,
    EPOCH_2000,
    FIXED,
    FOOTER,
    FOOTER_COOKIE,
    HEADER_COOKIE,
    LOCATOR,
    LOCATOR_CODES,
    MAX_BLOCK_SIZE,
    MAX_SECTORS,
    MAX_SIZE,
    NO_OFFSET,
    TYPE_NAMES,
    VERSION,
    DynHeader,
    Footer,
    bitmap_bytes,
    checksum,
    chs,
    footer_problem,
    guid_text,
    header_problem,
    new_dyn_header,
    new_footer,
    parent_hint,
    parse_dyn_header,
    parse_footer,
)
from blockyard.errors import MediaError

__all__ = [  # the header names are re-exported for ``vhd_layout as V`` users
    "BAT_FREE", "BAT_SECTOR_ENTRIES", "BatScan", "CREATOR_APP", "CREATOR_OS", "CREATOR_VERSION",
    "DEFAULT_BLOCK_SIZE", "DIFF", "DYNAMIC", "DYN_HEADER", "DynHeader", "EPOCH_2000", "FIXED",
    "FOOTER", "FOOTER_COOKIE", "Footer", "HEADER_COOKIE", "LOCATOR", "LOCATOR_CODES",
    "MAX_BLOCK_SIZE", "MAX_SECTORS", "MAX_SIZE", "NO_OFFSET", "TYPE_NAMES", "VERSION", "all_set",
    "bat_dump", "bat_load", "bit", "bitmap_bytes", "checksum", "chs", "footer_problem", "gaps",
    "guid_text", "header_problem", "load", "meta_end", "new_dyn_header", "new_footer",
    "parent_hint", "parse_dyn_header", "parse_footer", "runs", "scan_bat", "set_bits",
]


@dataclass
class BatScan:
    """BAT entries checked against the file (§3.3): live blocks sorted by position."""

    live: list[tuple[int, int]]  # (byte position, block)
    errors: list[str]
    end: int  # end of the last block, or of the metadata when there is none


def meta_end(footer: Footer, dyn: DynHeader) -> int:
    """First byte after the copy at 0, the dynamic header, the BAT and parent locators."""
    ends = [512, footer.data_offset + 1024, dyn.table_offset + dyn.bat_bytes]
    for loc in dyn.locators:
        if loc["code"] in LOCATOR_CODES:  # "data space": sectors per the spec, bytes in practice
            space = loc["space"] * 512 if loc["space"] < 512 else loc["space"]
            ends.append(loc["offset"] + max(loc["length"], space))
    return -(-max(ends) // 512) * 512


def scan_bat(bat: list[int] | Any, stride: int, first: int, limit: int) -> BatScan:
    """Blocks must lie in [first, limit) and never overlap each other."""
    errors: list[str] = []
    live: list[tuple[int, int]] = []
    for block, entry in enumerate(bat):
        if entry == BAT_FREE:
            continue
        start = entry * 512
        if start < first:
            errors.append(f"VHD block {block} at {start:#x} overlaps the metadata")
        elif start + stride > limit:
            errors.append(f"VHD block {block} at {start:#x} lies past the end of the file")
        else:
            live.append((start, block))
    live.sort()
    for (a, block_a), (b, block_b) in zip(live, live[1:], strict=False):
        if b < a + stride:
            how = "share" if a == b else "overlap at"
            errors.append(f"VHD blocks {block_a} and {block_b} {how} {b:#x}")
    end = live[-1][0] + stride if live else first
    return BatScan(live, errors, max(end, first))


def gaps(live: list[tuple[int, int]], stride: int, first: int) -> list[int]:
    """Positions of block-sized holes between the metadata and the last block."""
    holes: list[int] = []
    prev = first
    for start, _block in live:
        holes.extend(range(prev, start - stride + 1, stride))
        prev = max(prev, start + stride)
    return holes


# ---- BAT and sector bitmaps (§3.3) ---------------------------------------------------
BAT_SECTOR_ENTRIES = 128


def bat_load(raw: bytes) -> array[int]:
    bat = array("I")
    bat.frombytes(raw)
    if byteorder == "little":
        bat.byteswap()
    return bat


def bat_dump(entries: array[int]) -> bytes:
    out = array("I", entries)
    if byteorder == "little":
        out.byteswap()
    return out.tobytes()


def bit(bm: bytearray, sector: int) -> bool:
    return bool(bm[sector >> 3] & (0x80 >> (sector & 7)))  # §3.3: MSB first


def runs(bm: bytearray, inner: int, n: int) -> list[tuple[int, int, bool]]:
    """(byte start, length, bit set) runs of [inner, inner + n) by sector bit."""
    end, pos, out = inner + n, inner, []
    sector = inner // 512
    while pos < end:
        state = bit(bm, sector)
        nxt = sector + 1
        while nxt * 512 < end and bit(bm, nxt) == state:
            nxt += 1
        stop = min(nxt * 512, end)
        out.append((pos, stop - pos, state))
        pos, sector = stop, nxt
    return out


def set_bits(bm: bytearray, first: int, count: int) -> None:
    for sector in range(first, first + count):
        bm[sector >> 3] |= 0x80 >> (sector & 7)


def all_set(bm: bytes | bytearray | memoryview, sectors: int) -> bool:
    whole, rest = divmod(sectors, 8)
    if bm[:whole] != b"\xff" * whole:
        return False
    mask = (0xFF << (8 - rest)) & 0xFF
    return not rest or bm[whole] & mask == mask


# ---- reading an image (§3.1-§3.3) --------------------------------------------------
def load(fd: int, path: str) -> tuple[Any, ...]:
    """Footer(s), dynamic header and BAT, all checked (§3); MediaError names the problem."""
    size = os.fstat(fd).st_size
    if size < 512:
        raise MediaError(f"{path}: file too short for a VHD ({size} bytes)")
    tail = os.pread(fd, 512, size - 512)
    end, why = parse_footer(tail)
    head = os.pread(fd, 512, 0) if size >= 1024 else b""
    copy, _ = parse_footer(head)
    footer, problems = end, []
    if end is None:  # §3.1/§7: fall back to the copy at 0, as VirtualBox does
        if copy is None or copy.disk_type == FIXED:
            raise MediaError(f"{path}: {why}")
        footer = copy
        problems.append(f"trailing footer damaged ({why}); the copy at offset 0 was used")
    assert footer is not None
    problem = footer_problem(footer)
    if problem:
        raise MediaError(f"{path}: {problem}")
    if footer.disk_type == FIXED:
        if footer.current_size > size - 512:
            raise MediaError(f"{path}: fixed VHD is shorter than its disk size")
        return footer, None, array("I"), size - 512, problems
    if end is not None and head != tail:
        problems.append("footer copy at offset 0 is damaged or differs from the trailing footer")
    return _load_dynamic(fd, path, size, footer, end is not None, problems)


def _load_dynamic(fd: int, path: str, size: int, footer: Footer, end_ok: bool,
                  problems: list[str]) -> tuple[Any, ...]:
    limit = size - 512 if end_ok else size
    if footer.data_offset + 1024 > limit:
        raise MediaError(f"{path}: VHD dynamic header lies past the end of the file")
    dyn, why = parse_dyn_header(os.pread(fd, 1024, footer.data_offset))
    if dyn is None:
        raise MediaError(f"{path}: {why}")
    problem = header_problem(dyn, footer.current_size, limit)
    if problem:
        raise MediaError(f"{path}: {problem}")
    bat = bat_load(os.pread(fd, 4 * dyn.max_entries, dyn.table_offset))
    stride = bitmap_bytes(dyn.block_size) + dyn.block_size
    scan = scan_bat(bat, stride, meta_end(footer, dyn), limit)
    if scan.errors:
        more = f" (and {len(scan.errors) - 1} more)" if len(scan.errors) > 1 else ""
        raise MediaError(f"{path}: {scan.errors[0]}{more}")
    footer_pos = size - 512 if scan.end <= size - 512 else size
    return footer, dyn, bat, footer_pos, problems
