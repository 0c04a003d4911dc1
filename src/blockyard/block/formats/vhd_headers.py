"""VHD footer and dynamic header: structures, checks, CHS geometry (image-formats.md §3).

All integers are big-endian.  The footer (512 bytes) ends every VHD;
dynamic and differencing disks keep a copy at offset 0 and a 1024-byte
dynamic header at ``footer.data_offset``.  Both structures carry a one's-
complement checksum (§3.1, §3.2), verified on parse and recomputed by
``pack``.  Headers are parsed once per open with construct.  The BAT, the
sector bitmaps and loading a whole image are in ``vhd_layout``, which
re-exports these names.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, fields
from typing import Any

from construct import Array, Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Struct

FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
VERSION = 0x00010000
FIXED, DYNAMIC, DIFF = 2, 3, 4  # §3.1 disk types
TYPE_NAMES = {FIXED: "fixed", DYNAMIC: "dynamic", DIFF: "diff"}
NO_OFFSET = 0xFFFFFFFFFFFFFFFF
BAT_FREE = 0xFFFFFFFF  # §3.3
DEFAULT_BLOCK_SIZE = 2 << 20
MAX_BLOCK_SIZE = 256 << 20
MAX_SECTORS = 0xFF000000  # §3.4: 2040 GiB, Hyper-V's and qemu's limit
MAX_SIZE = MAX_SECTORS * 512
EPOCH_2000 = 946684800  # §3.1: timestamps count seconds from 2000-01-01 UTC
CREATOR_APP = b"blky"
CREATOR_VERSION = 0x00000001
CREATOR_OS = b"Wi2k"
LOCATOR_CODES = {0x57326B75: "W2ku", 0x57327275: "W2ru", 0x4D616358: "MacX"}

FOOTER = Struct(  # §3.1, byte offsets in the comments
    "cookie" / Bytes(8),  # 0
    "features" / Int32ub,  # 8
    "version" / Int32ub,  # 12
    "data_offset" / Int64ub,  # 16
    "timestamp" / Int32ub,  # 24
    "creator_app" / Bytes(4),  # 28
    "creator_version" / Int32ub,  # 32
    "creator_os" / Bytes(4),  # 36
    "original_size" / Int64ub,  # 40
    "current_size" / Int64ub,  # 48
    "cylinders" / Int16ub,  # 56
    "heads" / Int8ub,  # 58
    "sectors" / Int8ub,  # 59
    "disk_type" / Int32ub,  # 60
    "checksum" / Int32ub,  # 64
    "unique_id" / Bytes(16),  # 68
    "saved_state" / Int8ub,  # 84
    "reserved" / Bytes(427),  # 85
)
LOCATOR = Struct("code" / Int32ub, "space" / Int32ub, "length" / Int32ub,
                 "reserved" / Int32ub, "offset" / Int64ub)
DYN_HEADER = Struct(  # §3.2
    "cookie" / Bytes(8),  # 0
    "data_offset" / Int64ub,  # 8
    "table_offset" / Int64ub,  # 16
    "version" / Int32ub,  # 24
    "max_entries" / Int32ub,  # 28
    "block_size" / Int32ub,  # 32
    "checksum" / Int32ub,  # 36
    "parent_uuid" / Bytes(16),  # 40
    "parent_timestamp" / Int32ub,  # 56
    "reserved1" / Int32ub,  # 60
    "parent_name" / Bytes(512),  # 64, UTF-16 BE
    "locators" / Array(8, LOCATOR),  # 576
    "reserved2" / Bytes(256),  # 768
)
assert FOOTER.sizeof() == 512 and DYN_HEADER.sizeof() == 1024


def checksum(raw: bytes, at: int) -> int:
    """One's complement of the byte sum with the 4 checksum bytes taken as zero (§3.1)."""
    return ~(sum(raw) - sum(raw[at:at + 4])) & 0xFFFFFFFF


def _plain(container: Any) -> dict[str, Any]:
    return {k: v for k, v in container.items() if not k.startswith("_")}


@dataclass
class Footer:
    cookie: bytes
    features: int
    version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_os: bytes
    original_size: int
    current_size: int
    cylinders: int
    heads: int
    sectors: int
    disk_type: int
    checksum: int
    unique_id: bytes
    saved_state: int
    reserved: bytes

    def pack(self) -> bytes:
        raw = bytearray(FOOTER.build({f.name: getattr(self, f.name) for f in fields(self)}))
        self.checksum = checksum(bytes(raw), 64)
        raw[64:68] = self.checksum.to_bytes(4, "big")
        return bytes(raw)

    @property
    def geometry(self) -> tuple[int, int, int]:
        return self.cylinders, self.heads, self.sectors


@dataclass
class DynHeader:
    cookie: bytes
    data_offset: int
    table_offset: int
    version: int
    max_entries: int
    block_size: int
    checksum: int
    parent_uuid: bytes
    parent_timestamp: int
    reserved1: int
    parent_name: bytes
    locators: list[dict[str, int]]
    reserved2: bytes

    def pack(self) -> bytes:
        raw = bytearray(DYN_HEADER.build({f.name: getattr(self, f.name) for f in fields(self)}))
        self.checksum = checksum(bytes(raw), 36)
        raw[36:40] = self.checksum.to_bytes(4, "big")
        return bytes(raw)

    @property
    def bat_bytes(self) -> int:
        """The BAT's length in the file, padded to a sector (§3.3)."""
        return -(-4 * self.max_entries // 512) * 512


def parse_footer(raw: bytes) -> tuple[Footer | None, str]:
    """(footer, "") or (None, what is wrong) for 512 bytes that should be a footer."""
    if len(raw) < 512 or raw[:8] != FOOTER_COOKIE:
        return None, "no VHD footer (cookie 'conectix' missing)"
    footer = Footer(**_plain(FOOTER.parse(raw)))
    if checksum(raw[:512], 64) != footer.checksum:  # §3.1
        return None, f"VHD footer checksum mismatch (stored {footer.checksum:#010x})"
    return footer, ""


def parse_dyn_header(raw: bytes) -> tuple[DynHeader | None, str]:
    if len(raw) < 1024 or raw[:8] != HEADER_COOKIE:
        return None, "no VHD dynamic header (cookie 'cxsparse' missing)"
    values = _plain(DYN_HEADER.parse(raw))
    values["locators"] = [_plain(loc) for loc in values["locators"]]
    header = DynHeader(**values)
    if checksum(raw[:1024], 36) != header.checksum:  # §3.2
        return None, f"VHD dynamic header checksum mismatch (stored {header.checksum:#010x})"
    return header, ""


def footer_problem(f: Footer) -> str | None:
    checks: list[tuple[bool, str]] = [
        (f.version >> 16 != 1, f"unsupported VHD version {f.version:#010x}"),  # §3.1
        (f.disk_type not in TYPE_NAMES, f"bad VHD disk type {f.disk_type}"),
        (f.current_size < 512, f"VHD disk size {f.current_size} is too small"),
        (f.disk_type != FIXED and f.data_offset in (0, NO_OFFSET),
         "dynamic VHD without a dynamic header offset"),
    ]
    return next((msg for bad, msg in checks if bad), None)


def header_problem(h: DynHeader, size: int, limit: int) -> str | None:
    """``limit``: where the block area ends (the trailing footer)."""
    bs = h.block_size
    checks: list[tuple[bool, str]] = [
        (h.version >> 16 != 1, f"unsupported VHD dynamic header version {h.version:#010x}"),
        (bs < 512 or bs > MAX_BLOCK_SIZE or bool(bs & (bs - 1)),  # §3.2: power of two
         f"bad VHD block size {bs}"),
        (h.max_entries * bs < size,  # §3.2: max table entries >= ceil(size / block size)
         f"VHD BAT has {h.max_entries} entries, too few for {size} bytes"),
        (h.table_offset < 512 or h.table_offset + 4 * h.max_entries > limit,
         "VHD BAT lies outside the file"),
    ]
    return next((msg for bad, msg in checks if bad), None)


def chs(total_sectors: int) -> tuple[int, int, int]:
    """CHS for a size, the spec's algorithm (§3.4); C*H*S never exceeds the sectors."""
    t = min(total_sectors, 65535 * 16 * 255)
    if t >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = t // spt
    else:
        spt = 17
        cth = t // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = t // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = t // spt
    return cth // heads, heads, spt


def new_footer(size: int, disk_type: int) -> Footer:
    c, h, s = chs(size // 512)
    return Footer(
        cookie=FOOTER_COOKIE, features=2, version=VERSION,
        data_offset=NO_OFFSET if disk_type == FIXED else 512,
        timestamp=max(0, int(time.time()) - EPOCH_2000) & 0xFFFFFFFF,
        creator_app=CREATOR_APP, creator_version=CREATOR_VERSION, creator_os=CREATOR_OS,
        original_size=size, current_size=size, cylinders=c, heads=h, sectors=s,
        disk_type=disk_type, checksum=0, unique_id=uuid.uuid4().bytes, saved_state=0,
        reserved=bytes(427))


def new_dyn_header(size: int, block_size: int) -> DynHeader:
    return DynHeader(
        cookie=HEADER_COOKIE, data_offset=NO_OFFSET, table_offset=1536, version=VERSION,
        max_entries=-(-size // block_size), block_size=block_size, checksum=0,
        parent_uuid=bytes(16), parent_timestamp=0, reserved1=0, parent_name=bytes(512),
        locators=[dict(code=0, space=0, length=0, reserved=0, offset=0)] * 8,
        reserved2=bytes(256))


def bitmap_bytes(block_size: int) -> int:
    """Sector bitmap size: one bit per sector, padded to a sector (§3.3)."""
    needed = -(-(block_size // 512) // 8)
    return max(512, -(-needed // 512) * 512)


def guid_text(raw: bytes) -> str:
    """VHD UUIDs as VirtualBox shows them (GUID byte order, §6.2); compare raw bytes."""
    return str(uuid.UUID(bytes_le=bytes(raw)))


def parent_hint(h: DynHeader, read: Any) -> tuple[str | None, list[tuple[str, str]]]:
    """Parent file name (UTF-16 BE) and the decoded W2ku/W2ru/MacX locators (§3.2)."""
    name = h.parent_name.decode("utf-16-be", "replace").split("\0", 1)[0] or None
    found = []
    for loc in h.locators:
        kind = LOCATOR_CODES.get(loc["code"])
        if kind and 0 < loc["length"] <= 4096:
            raw = read(loc["length"], loc["offset"])
            text = raw.decode("utf-8" if kind == "MacX" else "utf-16-le", "replace")
            found.append((kind, text.rstrip("\0")))
    return name, found
