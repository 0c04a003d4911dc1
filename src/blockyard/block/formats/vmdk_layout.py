"""Hosted sparse extent metadata: header, grain directory, grain tables.

Field-level facts are in image-formats.md §2.2 (header), §2.3 (GD / GT) and
§2.4 (streamOptimized footer and markers).  Everything here runs once per
open (construct is fine); the per-request lookups live in ``vmdk_sparse``.

``load_tables`` reads the GD, the redundant GD and every grain table, and
refuses (MediaError) any pointer past the end of the file or any two
structures that overlap -- two GTEs naming one grain included -- before a
single byte is served.
"""

from __future__ import annotations

import bisect
import os
from array import array
from dataclasses import dataclass, field

from construct import Bytes, Const, ConstructError, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from blockyard.errors import MediaError

SECTOR = 512
MAGIC = b"KDMV"
GD_AT_END = 0xFFFFFFFFFFFFFFFF
NL_CHECK = b"\n \r\n"
FLAG_NL_DETECT = 1 << 0
FLAG_RGD = 1 << 1
FLAG_ZERO_GRAIN = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
COMPRESS_DEFLATE = 1
GTE_ZEROED = 1  # §2.3: GTE 1 with flag bit 2 = zeroed grain
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3
MAX_GD_ENTRIES = 32 << 20  # qemu's L1 size limit
MAX_GRAIN_SECTORS = 1 << 16

SPARSE_HEADER = Struct(  # §2.2, 512 bytes, little-endian, packed
    "magic" / Const(MAGIC),
    "version" / Int32ul,
    "flags" / Int32ul,
    "capacity" / Int64ul,
    "grain_size" / Int64ul,
    "desc_offset" / Int64ul,
    "desc_size" / Int64ul,
    "num_gtes_per_gt" / Int32ul,
    "rgd_offset" / Int64ul,
    "gd_offset" / Int64ul,
    "overhead" / Int64ul,
    "unclean_shutdown" / Int8ul,
    "nl_check" / Bytes(4),
    "compress_algorithm" / Int16ul,
    "pad" / Bytes(433),
)
MARKER = Struct("value" / Int64ul, "size" / Int32ul, "type" / Int32ul)  # §2.4


@dataclass
class SparseHeader:
    version: int
    flags: int
    capacity: int  # sectors
    grain_size: int  # sectors
    desc_offset: int
    desc_size: int
    num_gtes_per_gt: int
    rgd_offset: int
    gd_offset: int
    overhead: int
    unclean_shutdown: int = 0
    compress_algorithm: int = 0

    @property
    def compressed(self) -> bool:
        return self.compress_algorithm == COMPRESS_DEFLATE

    @property
    def zero_grain(self) -> bool:
        return bool(self.flags & FLAG_ZERO_GRAIN) and self.version >= 2

    @property
    def use_rgd(self) -> bool:
        return bool(self.flags & FLAG_RGD) and self.rgd_offset != 0

    @property
    def gt_coverage(self) -> int:
        """Sectors covered by one grain table."""
        return self.num_gtes_per_gt * self.grain_size

    @property
    def gd_entries(self) -> int:
        return -(-self.capacity // self.gt_coverage)

    @property
    def gt_sectors(self) -> int:
        return -(-self.num_gtes_per_gt * 4 // SECTOR)

    def build(self) -> bytes:
        return SPARSE_HEADER.build(dict(
            magic=MAGIC, version=self.version, flags=self.flags, capacity=self.capacity,
            grain_size=self.grain_size, desc_offset=self.desc_offset, desc_size=self.desc_size,
            num_gtes_per_gt=self.num_gtes_per_gt, rgd_offset=self.rgd_offset,
            gd_offset=self.gd_offset, overhead=self.overhead,
            unclean_shutdown=self.unclean_shutdown, nl_check=NL_CHECK,
            compress_algorithm=self.compress_algorithm, pad=bytes(433)))


def parse_header(raw: bytes, where: str) -> SparseHeader:
    if len(raw) < SECTOR:
        raise MediaError(f"{where}: truncated sparse extent header ({len(raw)} bytes)")
    try:
        c = SPARSE_HEADER.parse(raw[:SECTOR])
    except ConstructError:
        raise MediaError(f"{where}: no VMDK sparse extent magic (KDMV)") from None
    if c.flags & FLAG_NL_DETECT and c.nl_check != NL_CHECK:  # §2.2 offset 73
        raise MediaError(f"{where}: header damaged by a CR/LF (text mode) transfer")
    return SparseHeader(c.version, c.flags, c.capacity, c.grain_size, c.desc_offset,
                        c.desc_size, c.num_gtes_per_gt, c.rgd_offset, c.gd_offset, c.overhead,
                        c.unclean_shutdown, c.compress_algorithm)


def validate_header(h: SparseHeader, file_size: int, where: str) -> None:
    """The §2.2 rules every reader relies on; raises MediaError."""
    if not 1 <= h.version <= 3:
        raise MediaError(f"{where}: sparse extent version {h.version} not supported")
    g = h.grain_size
    if g < 8 or g > MAX_GRAIN_SECTORS or g & (g - 1):  # power of two >= 8 (VirtualBox)
        raise MediaError(f"{where}: invalid grain size of {g} sectors")
    if not 1 <= h.num_gtes_per_gt <= 512:  # qemu: "L2 table size too big"
        raise MediaError(f"{where}: invalid numGTEsPerGT {h.num_gtes_per_gt}")
    if h.gd_entries > MAX_GD_ENTRIES:
        raise MediaError(f"{where}: capacity of {h.capacity} sectors is too large")
    if h.compress_algorithm not in (0, COMPRESS_DEFLATE):
        raise MediaError(f"{where}: unknown compression algorithm {h.compress_algorithm}")
    if h.compressed and not h.flags & FLAG_MARKERS:
        raise MediaError(f"{where}: compressed grains without markers are not supported")
    if h.desc_offset and not 0 < h.desc_size <= 2048:
        raise MediaError(f"{where}: invalid embedded descriptor size {h.desc_size}")
    if h.desc_offset and (h.desc_offset + h.desc_size) * SECTOR > file_size:
        raise MediaError(f"{where}: embedded descriptor lies past the end of the file")
    if h.overhead * SECTOR > file_size:  # qemu: "File truncated, expecting at least ..."
        raise MediaError(f"{where}: file truncated: {file_size} bytes, metadata needs "
                         f"{h.overhead * SECTOR}")
    if h.gd_offset == 0:
        raise MediaError(f"{where}: grain directory offset is 0")


def read_footer(fd: int, file_size: int, where: str) -> SparseHeader:
    """GD_AT_END: the real header is the footer at EOF - 1024 (§2.4)."""
    if file_size < 3 * SECTOR:
        raise MediaError(f"{where}: streamOptimized footer missing (file too short)")
    raw = os.pread(fd, 3 * SECTOR, file_size - 3 * SECTOR)
    marker, eos = MARKER.parse(raw[:16]), MARKER.parse(raw[2 * SECTOR:2 * SECTOR + 16])
    if marker.size != 0 or marker.type != MARKER_FOOTER or eos.value or eos.size or eos.type:
        raise MediaError(f"{where}: streamOptimized footer or end-of-stream marker invalid")
    footer = parse_header(raw[SECTOR:2 * SECTOR], where)
    if footer.gd_offset == GD_AT_END:
        raise MediaError(f"{where}: streamOptimized footer has no grain directory offset")
    return footer


@dataclass
class Tables:
    """The grain directory, its redundant copy, and every grain table in memory."""

    gd: array  # u32 sector offsets of GTs, 0 = absent
    rgd: array | None
    gts: dict[int, array] = field(default_factory=dict)  # GD index -> GT entries
    rgt_ok: bool = True  # False: redundant structures unusable (check() says why)
    file_size: int = 0  # at load time


def _read_u32(fd: int, sector: int, count: int, file_size: int, what: str, where: str) -> array:
    nbytes = count * 4
    if sector * SECTOR + nbytes > file_size:
        raise MediaError(f"{where}: {what} at sector {sector} lies past the end of the file")
    arr = array("I", os.pread(fd, nbytes, sector * SECTOR))
    if len(arr) != count:
        raise MediaError(f"{where}: short read of {what}")
    return arr


def load_tables(fd: int, h: SparseHeader, file_size: int, where: str) -> Tables:
    n = h.gd_entries
    gd = _read_u32(fd, h.gd_offset, n, file_size, "grain directory", where)
    rgd = None
    if h.use_rgd and not h.compressed:
        rgd = _read_u32(fd, h.rgd_offset, n, file_size, "redundant grain directory", where)
    tables = Tables(gd, rgd, file_size=file_size)
    for i, sector in enumerate(gd):
        if sector:
            tables.gts[i] = _read_u32(fd, sector, h.num_gtes_per_gt, file_size,
                                      f"grain table {i}", where)
    if rgd is not None:
        tables.rgt_ok = all(
            (rgd[i] != 0) == (gd[i] != 0)
            and (rgd[i] + h.gt_sectors) * SECTOR <= file_size for i in range(n))
    check_layout(h, tables, file_size, where)
    return tables


def metadata_regions(h: SparseHeader, t: Tables) -> list[tuple[int, int, str]]:
    """(start, end, name) in sectors of every non-grain structure."""
    gd_sectors = -(-h.gd_entries * 4 // SECTOR)
    regions = [(0, 1, "the header"), (h.gd_offset, h.gd_offset + gd_sectors, "the GD")]
    if h.desc_offset:
        regions.append((h.desc_offset, h.desc_offset + h.desc_size, "the descriptor"))
    for i, sector in enumerate(t.gd):
        if sector:
            regions.append((sector, sector + h.gt_sectors, f"grain table {i}"))
    if t.rgd is not None and t.rgt_ok:
        regions.append((h.rgd_offset, h.rgd_offset + gd_sectors, "the redundant GD"))
        for i, sector in enumerate(t.rgd):
            if sector:
                regions.append((sector, sector + h.gt_sectors, f"redundant grain table {i}"))
    return sorted(regions)


def grain_pointers(h: SparseHeader, t: Tables) -> array:
    """Sorted sector offsets of every allocated grain."""
    out = array("Q")
    for gt in t.gts.values():
        out.extend(v for v in gt if v > 1 or (v == 1 and not h.zero_grain))
    return array("Q", sorted(out))


def used_regions(h: SparseHeader, t: Tables) -> list[tuple[int, int]]:
    """(start, end) in bytes of everything the tables reference, sorted."""
    regions = [(a * SECTOR, b * SECTOR) for a, b, _ in metadata_regions(h, t)]
    if t.rgd is not None and not t.rgt_ok:  # keep clear of what the RGD names in the file
        regions += [(s * SECTOR, (s + h.gt_sectors) * SECTOR) for s in t.rgd
                    if s and s * SECTOR < t.file_size]
    size = h.grain_size * SECTOR
    regions += [(g * SECTOR, g * SECTOR + size) for g in grain_pointers(h, t)]
    return sorted(regions)


def holes(h: SparseHeader, t: Tables, align: int) -> list[int]:
    """Byte offsets of grain-sized, ``align``-aligned slots past the overhead that
    nothing references (space freed earlier, or leaked by a crash)."""
    grain = h.grain_size * SECTOR
    out, pos = [], h.overhead * SECTOR
    for a, b in used_regions(h, t):
        slot = -(-pos // align) * align
        while slot + grain <= a:
            out.append(slot)
            slot += grain
        pos = max(pos, b)
    return out


def where_is(h: SparseHeader, t: Tables, sector: int) -> str:
    """Name the GTE(s) pointing at a grain sector, for error messages."""
    hits = [f"GD {i} GTE {j}" for i, gt in t.gts.items() for j, v in enumerate(gt) if v == sector]
    return " and ".join(hits[:2]) or f"sector {sector}"


def check_layout(h: SparseHeader, t: Tables, file_size: int, where: str) -> None:
    """Refuse overlapping structures and pointers past EOF (qemu check: 'beyond EOF')."""
    regions = metadata_regions(h, t)
    for (_s0, e0, n0), (s1, _e1, n1) in zip(regions, regions[1:], strict=False):
        if s1 < e0:
            raise MediaError(f"{where}: {n0} and {n1} overlap at sector {s1}")
    grains = grain_pointers(h, t)
    end_sectors = -(-file_size // SECTOR)
    if grains and grains[-1] >= end_sectors:
        raise MediaError(f"{where}: {where_is(h, t, grains[-1])} points past the end of "
                         f"the file (sector {grains[-1]})")
    span = 1 if h.compressed else h.grain_size  # compressed grains vary in size
    starts = [r[0] for r in regions]
    for g in grains:
        k = bisect.bisect_right(starts, g) - 1  # the region at or before g, then the next
        hit = k if k >= 0 and regions[k][1] > g else k + 1
        if hit < len(regions) and regions[hit][0] < g + span and regions[hit][1] > g:
            raise MediaError(f"{where}: {where_is(h, t, g)} points into {regions[hit][2]}")
    for a, b in zip(grains, grains[1:], strict=False):
        if b - a < span:
            pair = where_is(h, t, a) if a == b else f"{where_is(h, t, a)} and {where_is(h, t, b)}"
            raise MediaError(f"{where}: {pair} overlap: grains at sectors {a} and {b}")
