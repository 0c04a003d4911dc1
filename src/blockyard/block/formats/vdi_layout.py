"""VDI 1.1 on-disk layout: pre-header, header and block map (image-formats.md §1).

Headers are parsed once per open with construct (declarative and symmetric:
the same table parses and builds).  ``validate`` checks every field and
``scan_map`` every block-map entry before the driver trusts them; both are
pure functions, so ``check()`` and the fuzz tests reuse them.  The small
synchronous file helpers at the end (read a whole image's metadata, write map
sectors or the header, copy slots, truncate) are what vdi.py and vdi_maint.py
run on the I/O pool.

Byte order: every integer is little-endian; UUIDs are stored in Windows-GUID
order (``uuid.UUID(bytes_le=...)``, §1.2).
"""

from __future__ import annotations

import os
import uuid
from array import array
from dataclasses import dataclass, field, fields
from sys import byteorder
from typing import Any

from construct import Adapter, Bytes, ConstructError, Int32ul, Int64ul, Struct

from blockyard.block.formats.vdi_vhd_common import pread_exact
from blockyard.errors import MediaError

SIGNATURE = 0xBEDA107F  # §1.1, bytes 7F 10 DA BE at 0x40
VERSION_1_1 = 0x00010001
PRE_SIZE = 0x48
HEADER_V1_SIZE = 0x180  # plain 1.1 (qemu)
HEADER_V1_PLUS_SIZE = 0x190  # 1.1 + LCHS (VirtualBox)
BLOCK_FREE = 0xFFFFFFFF  # §1.3: unallocated (base: zeros; diff: parent)
BLOCK_ZERO = 0xFFFFFFFE  # §1.3: reads as zeros, masks the parent
TYPE_NORMAL, TYPE_FIXED, TYPE_UNDO, TYPE_DIFF = 1, 2, 3, 4
TYPE_NAMES = {TYPE_NORMAL: "dynamic", TYPE_FIXED: "fixed", TYPE_DIFF: "diff"}
VBOX_ALIGN = 1 << 20  # §1.3: VirtualBox aligns block map and data to 1 MiB
DEFAULT_BLOCK_SIZE = 1 << 20
MAX_BLOCK_SIZE = 256 << 20
MAX_BLOCKS = 0x3FFFFFFF  # keeps the map (4 bytes each) below 4 GiB
VBOX_TEXT = b"<<< Oracle VM VirtualBox Disk Image >>>\n"  # §1.1: informational only
NULL_UUID = uuid.UUID(int=0)


class _Guid(Adapter):  # type: ignore[misc]
    """16 bytes in Windows-GUID order <-> uuid.UUID (§1.2)."""

    def _decode(self, obj: bytes, context: Any, path: Any) -> uuid.UUID:
        return uuid.UUID(bytes_le=bytes(obj))

    def _encode(self, obj: uuid.UUID, context: Any, path: Any) -> bytes:
        return obj.bytes_le


GEOMETRY = Struct("cylinders" / Int32ul, "heads" / Int32ul, "sectors" / Int32ul,
                  "sector_size" / Int32ul)
PRE_HEADER = Struct("text" / Bytes(64), "signature" / Int32ul, "version" / Int32ul)
HEADER_V1 = Struct(  # file offsets in the comments (§1.2)
    "header_size" / Int32ul,  # 0x048
    "image_type" / Int32ul,  # 0x04C
    "flags" / Int32ul,  # 0x050
    "comment" / Bytes(256),  # 0x054
    "offset_blocks" / Int32ul,  # 0x154
    "offset_data" / Int32ul,  # 0x158
    "legacy" / GEOMETRY,  # 0x15C
    "unused" / Int32ul,  # 0x16C
    "disk_size" / Int64ul,  # 0x170
    "block_size" / Int32ul,  # 0x178
    "block_extra" / Int32ul,  # 0x17C
    "blocks_total" / Int32ul,  # 0x180
    "blocks_allocated" / Int32ul,  # 0x184
    "uuid_image" / _Guid(Bytes(16)),  # 0x188
    "uuid_modification" / _Guid(Bytes(16)),  # 0x198
    "uuid_link" / _Guid(Bytes(16)),  # 0x1A8
    "uuid_parent_modification" / _Guid(Bytes(16)),  # 0x1B8
)
assert HEADER_V1.sizeof() == HEADER_V1_SIZE


@dataclass
class VdiHeader:
    """The pre-header and header fields; ``lchs`` is None for a 0x180 header."""

    text: bytes
    version: int
    header_size: int
    image_type: int
    flags: int
    comment: bytes
    offset_blocks: int
    offset_data: int
    legacy: dict[str, int]
    unused: int
    disk_size: int
    block_size: int
    block_extra: int
    blocks_total: int
    blocks_allocated: int
    uuid_image: uuid.UUID
    uuid_modification: uuid.UUID
    uuid_link: uuid.UUID
    uuid_parent_modification: uuid.UUID
    lchs: dict[str, int] | None = None
    signature: int = field(default=SIGNATURE, repr=False)

    @property
    def stride(self) -> int:
        """Bytes one data block takes in the file (§1.3: extra data precedes the block)."""
        return self.block_extra + self.block_size

    def slot_offset(self, slot: int) -> int:
        return self.offset_data + slot * self.stride + self.block_extra

    def pack(self) -> bytes:
        """Pre-header + header as stored; at most 0x190 bytes of header are ours."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        out = PRE_HEADER.build(values) + HEADER_V1.build(values)
        if self.lchs is not None:
            out += GEOMETRY.build(self.lchs)
        return out


def parse_header(raw: bytes, path: str) -> VdiHeader:
    """Parse the first bytes of a file; MediaError when they are not a VDI 1.1 header."""
    if len(raw) < PRE_SIZE + HEADER_V1_SIZE:
        raise MediaError(f"{path}: file too short for a VDI header ({len(raw)} bytes)")
    try:
        pre = PRE_HEADER.parse(raw)
        hdr = HEADER_V1.parse(raw[PRE_SIZE:])
    except ConstructError as exc:  # pragma: no cover - lengths were checked above
        raise MediaError(f"{path}: unreadable VDI header: {exc}") from None
    if pre.signature != SIGNATURE:  # §1.1
        raise MediaError(f"{path}: not a VDI image (signature {pre.signature:#010x})")
    if pre.version >> 16 != 1:  # §1.1: only the 1.x header layout is supported
        raise MediaError(f"{path}: unsupported VDI version {pre.version >> 16}."
                         f"{pre.version & 0xFFFF}")
    values = {k: v for k, v in {**pre, **hdr}.items() if not k.startswith("_")}
    lchs = None
    if hdr.header_size >= HEADER_V1_PLUS_SIZE and len(raw) >= PRE_SIZE + HEADER_V1_PLUS_SIZE:
        lchs = dict(GEOMETRY.parse(raw[PRE_SIZE + HEADER_V1_SIZE:]))
        lchs.pop("_io", None)
    values["legacy"] = {k: v for k, v in hdr.legacy.items() if not k.startswith("_")}
    return VdiHeader(**values, lchs=lchs)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def validate(h: VdiHeader, file_size: int, path: str) -> None:
    """Check every header field against §1.2/§1.3; raise MediaError on the first problem."""
    problem = _header_problem(h, file_size)
    if problem:
        raise MediaError(f"{path}: {problem}")


def _header_problem(h: VdiHeader, file_size: int) -> str | None:
    checks: list[tuple[bool, str]] = [
        (h.header_size < HEADER_V1_SIZE or h.header_size > 4096,  # §1.2
         f"bad VDI header size {h.header_size:#x}"),
        (h.image_type == TYPE_UNDO, "VDI undo images (type 3) are not supported"),
        (h.image_type not in TYPE_NAMES, f"bad VDI image type {h.image_type}"),
        (h.flags & ~1 != 0, f"bad VDI flags {h.flags:#x}"),  # §1.2: only bit 0 defined
        (h.legacy["sector_size"] != 512, f"VDI sector size {h.legacy['sector_size']} != 512"),
        (h.lchs is not None and h.lchs["sector_size"] not in (0, 512),
         "VDI LCHS sector size is not 512"),
        (h.disk_size == 0, "VDI disk size is 0"),
        (not _pow2(h.block_size) or not 512 <= h.block_size <= MAX_BLOCK_SIZE,
         f"bad VDI block size {h.block_size}"),  # §1.2: power of two
        (h.block_extra != 0 and not _pow2(h.block_extra),
         f"bad VDI block-extra size {h.block_extra}"),
        (h.blocks_total == 0 or h.blocks_total > MAX_BLOCKS,
         f"bad VDI block count {h.blocks_total}"),
        (h.blocks_total * h.block_size < h.disk_size,  # §1.2: total = ceil(size / bs)
         f"VDI block count {h.blocks_total} too small for disk size {h.disk_size}"),
        (h.blocks_allocated > h.blocks_total,
         f"VDI allocated blocks {h.blocks_allocated} > total {h.blocks_total}"),
        (h.offset_blocks < PRE_SIZE + min(h.header_size, HEADER_V1_PLUS_SIZE),
         f"VDI block map offset {h.offset_blocks:#x} overlaps the header"),
        (h.offset_data < h.offset_blocks + 4 * h.blocks_total,
         f"VDI data offset {h.offset_data:#x} overlaps the block map"),
        (h.offset_blocks + 4 * h.blocks_total > file_size,
         "VDI block map extends past the end of the file"),
        (h.uuid_image == NULL_UUID, "VDI image UUID is all zero"),  # §1.2: VirtualBox refuses
        (h.uuid_modification == NULL_UUID, "VDI modification UUID is all zero"),
    ]
    return next((msg for bad, msg in checks if bad), None)


def load_map(raw: bytes) -> array[int]:
    """Block map bytes (LE u32) -> array of host-order entries."""
    entries = array("I")
    entries.frombytes(raw)
    if byteorder == "big":  # pragma: no cover - x86/arm64 are little-endian
        entries.byteswap()
    return entries


def dump_map(entries: array[int]) -> bytes:
    if byteorder == "big":  # pragma: no cover
        swapped = array("I", entries)
        swapped.byteswap()
        return swapped.tobytes()
    return entries.tobytes()


@dataclass
class MapScan:
    """What ``scan_map`` found: the live slots and every inconsistency."""

    live: dict[int, int] = field(default_factory=dict)  # slot -> block
    errors: list[str] = field(default_factory=list)
    holes: list[int] = field(default_factory=list)  # slots below the end nobody uses
    end_slot: int = 0  # one past the highest live slot
    tail_bytes: int = 0  # file bytes past the last counted slot

    @property
    def referenced(self) -> int:
        return len(self.live)


def scan_map(h: VdiHeader, entries: array[int], file_size: int) -> MapScan:
    """Classify every map entry (§1.3): duplicates and pointers past EOF are errors."""
    scan = MapScan()
    slots_in_file = max(0, (file_size - h.offset_data) // h.stride)
    for block, slot in enumerate(entries):
        if slot >= BLOCK_ZERO:
            continue
        if slot >= h.blocks_total:  # qemu-img check: "block index too large"
            scan.errors.append(f"VDI block {block} points at slot {slot} >= {h.blocks_total}")
        elif slot >= slots_in_file:
            scan.errors.append(f"VDI block {block} points at slot {slot} past the end of file")
        elif slot in scan.live:
            scan.errors.append(f"VDI blocks {scan.live[slot]} and {block} share slot {slot}")
        else:
            scan.live[slot] = block
    scan.end_slot = max(scan.live, default=-1) + 1
    used = max(scan.end_slot, h.blocks_allocated)
    scan.holes = [s for s in range(used) if s not in scan.live]
    if h.image_type != TYPE_FIXED:
        scan.tail_bytes = max(0, file_size - (h.offset_data + used * h.stride))
    return scan


def new_header(size: int, block_size: int, fixed: bool, align: int = VBOX_ALIGN) -> VdiHeader:
    """A fresh 1.1+ header laid out the way VirtualBox does (§1.3 alignment)."""
    blocks = -(-size // block_size)
    off_blocks = _align(PRE_SIZE + HEADER_V1_PLUS_SIZE, align)
    off_data = _align(off_blocks + 4 * blocks, align)
    geometry = {"cylinders": 0, "heads": 0, "sectors": 0, "sector_size": 512}
    return VdiHeader(
        text=VBOX_TEXT.ljust(64, b"\0"), version=VERSION_1_1,
        header_size=HEADER_V1_PLUS_SIZE, image_type=TYPE_FIXED if fixed else TYPE_NORMAL,
        flags=0, comment=bytes(256), offset_blocks=off_blocks, offset_data=off_data,
        legacy=dict(geometry), unused=0, disk_size=size, block_size=block_size,
        block_extra=0, blocks_total=blocks, blocks_allocated=blocks if fixed else 0,
        uuid_image=uuid.uuid4(), uuid_modification=uuid.uuid4(), uuid_link=NULL_UUID,
        uuid_parent_modification=NULL_UUID, lchs=dict(geometry))


def _align(n: int, to: int) -> int:
    return -(-n // to) * to



# ---- synchronous file operations (open, publish, squeeze, check) -----------------
MAP_SECTOR_ENTRIES = 128  # a 512-byte sector of the map holds 128 entries


def read_image(fd: int, path: str) -> tuple[VdiHeader, array[int], MapScan]:
    """Read and check header and map; MediaError names the file and the first problem."""
    file_size = os.fstat(fd).st_size
    header = parse_header(os.pread(fd, PRE_SIZE + HEADER_V1_PLUS_SIZE, 0), path)
    validate(header, file_size, path)
    raw = os.pread(fd, 4 * header.blocks_total, header.offset_blocks)
    bmap = load_map(raw)
    scan = scan_map(header, bmap, file_size)
    if scan.errors:
        more = f" (and {len(scan.errors) - 1} more)" if len(scan.errors) > 1 else ""
        raise MediaError(f"{path}: {scan.errors[0]}{more}")
    return header, bmap, scan


def unclean(h: VdiHeader, scan: MapScan) -> bool:
    """Traces of an interrupted writer (module docstring of vdi.py)."""
    if h.image_type == TYPE_FIXED:
        return False
    return bool(scan.referenced != h.blocks_allocated or scan.holes or scan.tail_bytes)


def write_map_sectors(fd: int, h: VdiHeader, bmap: array[int], sectors: set[int]) -> None:
    """Write the map sectors named (128 entries each), never past the map's end."""
    for sector in sorted(sectors):
        first = sector * MAP_SECTOR_ENTRIES
        chunk = bmap[first:first + MAP_SECTOR_ENTRIES]
        os.pwrite(fd, dump_map(chunk), h.offset_blocks + 4 * first)


def write_header(fd: int, h: VdiHeader) -> None:
    os.pwrite(fd, h.pack(), 0)  # pre-header + our 0x180/0x190 bytes; the rest is kept


def copy_slots(fd: int, h: VdiHeader, moves: list[tuple[int, int]]) -> None:
    """Copy each (src, dst) slot's bytes; the caller syncs before publishing."""
    base = h.offset_data
    for src, dst in moves:
        data = pread_exact(fd, h.stride, base + src * h.stride)
        os.pwrite(fd, data, base + dst * h.stride)


def truncate_to(fd: int, h: VdiHeader, slots: int) -> None:
    end = h.offset_data + slots * h.stride
    if os.fstat(fd).st_size > end and h.image_type != TYPE_FIXED:
        os.ftruncate(fd, end)
