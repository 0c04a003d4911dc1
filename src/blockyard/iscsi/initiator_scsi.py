"""SCSI as the initiator speaks it: CDBs out, parameter data and sense data in.

CDB builders for the commands a remote disk needs (SPC-4 / SBC-3: INQUIRY,
READ CAPACITY, READ/WRITE(16), SYNCHRONIZE CACHE(16), UNMAP, WRITE SAME(16),
GET LBA STATUS, MODE SENSE, REPORT LUNS, TEST UNIT READY) with precompiled
``struct.Struct`` layouts, parsers for what they return (standard INQUIRY,
VPD 00h/80h/83h/B0h/B2h, capacity, LBA status, mode parameter header), and
``decode_sense`` for fixed (70h/71h) and descriptor (72h/73h) sense data,
turned into the one-line text error messages show.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from blockyard.scsi.opcodes import Op, SaIn16

_RW16 = struct.Struct(">BBQIBB")  # opcode, flags, lba, blocks, group, control
_CDB16_SA = struct.Struct(">BBQIBB")  # SERVICE ACTION IN(16): opcode, sa, lba, alloc, -, -
_CAP16 = struct.Struct(">QIBB")  # last lba, block length, p_type/prot_en, exponents
_CAP10 = struct.Struct(">II")
_LIMITS = struct.Struct(">BBHIIIIIIIQ")  # B0h bytes 4..43 (from WSNZ/MAXCMP on)
_LBA_DESC = struct.Struct(">QIB3x")
_UNMAP_DESC = struct.Struct(">QI4x")
FUA = 0x08

SENSE_KEYS = ("NO SENSE", "RECOVERED ERROR", "NOT READY", "MEDIUM ERROR", "HARDWARE ERROR",
              "ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT", "BLANK CHECK",
              "VENDOR SPECIFIC", "COPY ABORTED", "ABORTED COMMAND", "RESERVED",
              "VOLUME OVERFLOW", "MISCOMPARE", "COMPLETED")
ASC_TEXT = {
    (0x04, 0x00): "LOGICAL UNIT NOT READY", (0x04, 0x01): "LOGICAL UNIT BECOMING READY",
    (0x0C, 0x00): "WRITE ERROR", (0x11, 0x00): "UNRECOVERED READ ERROR",
    (0x1A, 0x00): "PARAMETER LIST LENGTH ERROR", (0x20, 0x00): "INVALID COMMAND OPERATION CODE",
    (0x21, 0x00): "LOGICAL BLOCK ADDRESS OUT OF RANGE", (0x24, 0x00): "INVALID FIELD IN CDB",
    (0x25, 0x00): "LOGICAL UNIT NOT SUPPORTED",
    (0x26, 0x00): "INVALID FIELD IN PARAMETER LIST", (0x27, 0x00): "WRITE PROTECTED",
    (0x27, 0x07): "SPACE ALLOCATION FAILED WRITE PROTECT",
    (0x28, 0x00): "NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED",
    (0x29, 0x00): "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED",
    (0x29, 0x07): "I_T NEXUS LOSS OCCURRED", (0x2A, 0x09): "CAPACITY DATA HAS CHANGED",
    (0x3A, 0x00): "MEDIUM NOT PRESENT", (0x3F, 0x0E): "REPORTED LUNS DATA HAS CHANGED",
    (0x44, 0x00): "INTERNAL TARGET FAILURE", (0x47, 0x00): "SCSI PARITY ERROR",
    (0x0E, 0x03): "INVALID FIELD IN COMMAND INFORMATION UNIT",
}
STATUS_TEXT = {0x02: "CHECK CONDITION", 0x08: "BUSY", 0x18: "RESERVATION CONFLICT",
               0x28: "TASK SET FULL", 0x30: "ACA ACTIVE", 0x40: "TASK ABORTED"}


# ---- CDBs ----------------------------------------------------------------------------------
def test_unit_ready() -> bytes:
    return bytes(6)


def inquiry(page: int | None = None, alloc: int = 255) -> bytes:
    return struct.pack(">BBBHB", Op.INQUIRY, 0 if page is None else 1, page or 0, alloc, 0)


def read_capacity10() -> bytes:
    return bytes([Op.READ_CAPACITY_10]) + bytes(9)


def read_capacity16(alloc: int = 32) -> bytes:
    return _CDB16_SA.pack(Op.SERVICE_ACTION_IN_16, SaIn16.READ_CAPACITY_16, 0, alloc, 0, 0)


def get_lba_status(lba: int, alloc: int = 4096) -> bytes:
    return _CDB16_SA.pack(Op.SERVICE_ACTION_IN_16, SaIn16.GET_LBA_STATUS, lba, alloc, 0, 0)


def read16(lba: int, blocks: int) -> bytes:
    return _RW16.pack(Op.READ_16, 0, lba, blocks, 0, 0)


def write16(lba: int, blocks: int, fua: bool = False) -> bytes:
    return _RW16.pack(Op.WRITE_16, FUA if fua else 0, lba, blocks, 0, 0)


def synchronize_cache16(lba: int = 0, blocks: int = 0) -> bytes:
    return _RW16.pack(Op.SYNCHRONIZE_CACHE_16, 0, lba, blocks, 0, 0)


def synchronize_cache10() -> bytes:
    return bytes([Op.SYNCHRONIZE_CACHE_10]) + bytes(9)


def write_same16(lba: int, blocks: int, unmap: bool = False) -> bytes:
    return _RW16.pack(Op.WRITE_SAME_16, 0x08 if unmap else 0, lba, blocks, 0, 0)


def unmap(ranges: list[tuple[int, int]]) -> tuple[bytes, bytes]:
    """UNMAP (SBC-3 5.28): the CDB and its parameter list for (lba, blocks) ranges."""
    body = b"".join(_UNMAP_DESC.pack(lba, n) for lba, n in ranges)
    params = struct.pack(">HH4x", 6 + len(body), len(body)) + body
    return struct.pack(">BB4xBHB", Op.UNMAP, 0, 0, len(params), 0), params


def mode_sense6(page: int = 0x3F, alloc: int = 255) -> bytes:
    return bytes([Op.MODE_SENSE_6, 0x08, page & 0x3F, 0, alloc, 0])  # DBD: no block descriptors


def report_luns(alloc: int = 4096) -> bytes:
    return struct.pack(">BBxxxxIxx", Op.REPORT_LUNS, 0, alloc)


# ---- parameter data ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Inquiry:
    qualifier: int
    device_type: int
    removable: bool
    version: int
    vendor: str
    product: str
    revision: str


def parse_inquiry(data: bytes) -> Inquiry:
    if len(data) < 36:
        raise ValueError(f"standard INQUIRY data of {len(data)} bytes (at least 36)")

    def text(a: int, b: int) -> str:
        return data[a:b].decode("ascii", "replace").strip()

    return Inquiry(data[0] >> 5, data[0] & 0x1F, bool(data[1] & 0x80), data[2],
                   text(8, 16), text(16, 32), text(32, 36))


def _vpd_body(data: bytes, page: int) -> bytes:
    if len(data) < 4 or data[1] != page:
        raise ValueError(f"VPD page {page:02x}h answered with page {data[1:2].hex() or '?'}")
    return data[4:4 + struct.unpack_from(">H", data, 2)[0]]


def parse_supported_pages(data: bytes) -> list[int]:
    return list(_vpd_body(data, 0x00))


def parse_serial(data: bytes) -> str:
    return _vpd_body(data, 0x80).decode("ascii", "replace").strip()


def parse_identity(data: bytes) -> str:
    """A stable identity string from VPD 83h, preferring NAA, EUI-64, SCSI name, T10 IDs.

    Only logical-unit designators count (association 0); formatted the way
    Linux names a LUN's WWID (``naa.6001405...``, ``eui.``, ``t10.``).
    """
    body = _vpd_body(data, 0x83)
    found: dict[int, str] = {}
    pos = 0
    while pos + 4 <= len(body):
        kind, length = body[pos + 1], body[pos + 3]
        value = body[pos + 4:pos + 4 + length]
        pos += 4 + length
        if (kind >> 4) & 0x03 or (kind & 0x0F) in found:
            continue  # designators of the port or the target device, or seen already
        dtype = kind & 0x0F
        text = value.decode("utf-8", "replace").rstrip("\0 ")
        found[dtype] = {3: "naa." + value.hex(), 2: "eui." + value.hex(), 8: text,
                        1: "t10." + " ".join(text.split())}.get(dtype, value.hex())
    for dtype in (3, 2, 8, 1):
        if dtype in found:
            return found[dtype]
    return next(iter(found.values()), "")


@dataclass(frozen=True, slots=True)
class BlockLimits:
    max_transfer: int = 0  # blocks; 0 = not reported
    optimal_transfer: int = 0
    max_unmap_lbas: int = 0
    max_unmap_descriptors: int = 0
    unmap_granularity: int = 0
    max_write_same: int = 0


def parse_block_limits(data: bytes) -> BlockLimits:
    body = _vpd_body(data, 0xB0).ljust(60, b"\0")
    f = _LIMITS.unpack_from(body, 0)
    # f: wsnz, maxcmp, optimal granularity, max transfer, optimal transfer, max prefetch,
    #    max unmap lbas, max unmap descriptors, granularity (+ugavalid), alignment, max ws
    return BlockLimits(f[3], f[4], f[6], f[7], f[8], f[10])


@dataclass(frozen=True, slots=True)
class Provisioning:
    lbpu: bool = False  # UNMAP supported
    lbpws: bool = False  # WRITE SAME(16) with UNMAP supported
    lbprz: bool = False  # unmapped blocks read as zeroes
    provisioning_type: int = 0


def parse_provisioning(data: bytes) -> Provisioning:
    body = _vpd_body(data, 0xB2).ljust(4, b"\0")
    return Provisioning(bool(body[1] & 0x80), bool(body[1] & 0x40), bool(body[1] & 0x04),
                        body[2] & 0x07)


@dataclass(frozen=True, slots=True)
class Capacity:
    blocks: int
    block_size: int
    lbpme: bool = False  # thin provisioning enabled (READ CAPACITY 16 only)
    lbprz: bool = False


def parse_capacity16(data: bytes) -> Capacity:
    raw = bytes(data).ljust(32, b"\0")
    last, size, _, _ = _CAP16.unpack_from(raw, 0)
    return Capacity(last + 1, size, bool(raw[14] & 0x80), bool(raw[14] & 0x40))


def parse_capacity10(data: bytes) -> Capacity:
    last, size = _CAP10.unpack_from(data, 0)
    return Capacity(last + 1, size)


def parse_lba_status(data: bytes) -> list[tuple[int, int, int]]:
    """GET LBA STATUS descriptors: (lba, blocks, status 0 mapped / 1 deallocated / 2 anchored)."""
    if len(data) < 8:
        return []
    n = min(struct.unpack_from(">I", data, 0)[0] + 4, len(data))
    return [(lba, blocks, status & 0x0F) for lba, blocks, status in
            (_LBA_DESC.unpack_from(data, pos) for pos in range(8, n - 15, 16))]


def parse_mode_header6(data: bytes) -> tuple[bool, bool]:
    """(write protected, DPOFUA) from the MODE SENSE(6) device-specific parameter."""
    if len(data) < 4:
        return False, False
    return bool(data[2] & 0x80), bool(data[2] & 0x10)


# ---- sense ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Sense:
    key: int
    asc: int
    ascq: int
    information: int | None = None

    def __str__(self) -> str:
        name = ASC_TEXT.get((self.asc, self.ascq), f"ASC {self.asc:02x}h ASCQ {self.ascq:02x}h")
        code = f"{self.key:x}/{self.asc:02x}/{self.ascq:02x}"
        return f"{SENSE_KEYS[self.key & 0x0F]}, {name} ({code})"


def decode_sense(sense: bytes) -> Sense | None:
    """Fixed (70h/71h) or descriptor (72h/73h) sense data (SPC-4 4.5); None if neither."""
    if len(sense) < 8:
        return None
    code = sense[0] & 0x7F
    if code in (0x70, 0x71) and len(sense) >= 14:
        info = int.from_bytes(sense[3:7], "big") if sense[0] & 0x80 else None
        return Sense(sense[2] & 0x0F, sense[12], sense[13], info)
    if code in (0x72, 0x73):
        info = None
        pos, end = 8, min(len(sense), 8 + sense[7])
        while pos + 2 <= end:
            if sense[pos] == 0x00 and pos + 12 <= end:  # information descriptor
                info = int.from_bytes(sense[pos + 4:pos + 12], "big")
            pos += 2 + sense[pos + 1]
        return Sense(sense[1] & 0x0F, sense[2], sense[3], info)
    return None


def describe_status(status: int, sense: bytes) -> str:
    """``CHECK CONDITION: ILLEGAL REQUEST, ... (5/24/00)`` and the like."""
    name = STATUS_TEXT.get(status, f"status {status:02x}h")
    decoded = decode_sense(sense) if sense else None
    return f"{name}: {decoded}" if decoded is not None else name
