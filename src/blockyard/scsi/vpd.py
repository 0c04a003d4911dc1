"""Identity of a disk: standard INQUIRY data and the VPD pages (SPC-4 7.8, SBC-3 6.5).

Everything an initiator uses to recognise the unit across sessions and
paths comes from one stable ``uuid``: the unit serial number (80h) is its
32 hex digits, the NAA locally assigned designator (83h, SPC-4 7.8.6.6.4) its
low 60 bits, the T10 vendor ID designator vendor + serial.
"""

from __future__ import annotations

import struct
import uuid as uuid_mod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blockyard.scsi.xcopy import third_party_copy_vpd

if TYPE_CHECKING:
    from blockyard.scsi.disk import DiskUnit

SUPPORTED, SERIAL, DEVICE_ID, EXTENDED, THIRD_PARTY_COPY = 0x00, 0x80, 0x83, 0x86, 0x8F
BLOCK_LIMITS, BLOCK_CHARACTERISTICS, PROVISIONING = 0xB0, 0xB1, 0xB2
VERSION_DESCRIPTORS = (0x00A0, 0x0960, 0x0460, 0x04C0)  # SAM-5, iSCSI, SPC-4, SBC-3
STANDARD_LEN = 74
_BLOCK_LIMITS = struct.Struct(">BBHIIIIIIIQIIIII")


def _ascii(text: str, width: int) -> bytes:
    """Left-aligned, space-padded printable ASCII (SPC-4 4.4.1)."""
    clean = "".join(c if 0x20 <= ord(c) < 0x7F else " " for c in text)
    return clean.encode("ascii")[:width].ljust(width, b" ")


@dataclass(frozen=True, slots=True)
class Identity:
    vendor: str = "BLOCKYRD"
    product: str = "VIRTUAL DISK"
    revision: str = "0001"
    uuid: uuid_mod.UUID = field(default_factory=uuid_mod.uuid4)

    @property
    def serial(self) -> str:
        return self.uuid.hex

    @property
    def naa(self) -> bytes:
        """NAA 3 (locally assigned), 8 bytes."""
        return ((0x3 << 60) | (self.uuid.int & ((1 << 60) - 1))).to_bytes(8, "big")


def standard_inquiry(unit: DiskUnit) -> bytes:
    """Standard INQUIRY data (SPC-4 6.6.2), version SPC-4, HiSup, CmdQue."""
    ident = unit.identity
    buf = bytearray(STANDARD_LEN)
    buf[0] = unit.peripheral_type
    buf[1] = 0x80 if unit.removable else 0
    buf[2] = 0x06  # SPC-4
    buf[3] = 0x12  # HISUP, RESPONSE DATA FORMAT 2
    buf[4] = STANDARD_LEN - 5
    buf[5] = 0x08 if unit.third_party_copy else 0  # 3PC
    buf[7] = 0x02  # CMDQUE
    buf[8:16] = _ascii(ident.vendor, 8)
    buf[16:32] = _ascii(ident.product, 16)
    buf[32:36] = _ascii(ident.revision, 4)
    for i, v in enumerate(VERSION_DESCRIPTORS):
        buf[58 + 2 * i:60 + 2 * i] = v.to_bytes(2, "big")
    return bytes(buf)


def _page(unit: DiskUnit, code: int, body: bytes) -> bytes:
    return bytes((unit.peripheral_type, code)) + len(body).to_bytes(2, "big") + body


def _designator(code_set: int, assoc_type: int, value: bytes) -> bytes:
    return bytes((code_set, assoc_type, 0, len(value))) + value


def device_identification(unit: DiskUnit) -> bytes:
    """Device Identification (SPC-4 7.8.6): LU designators and the target port."""
    ident = unit.identity
    t10 = _ascii(ident.vendor, 8) + ident.serial.encode()
    body = (_designator(0x01, 0x03, ident.naa)  # binary, LU, NAA
            + _designator(0x02, 0x01, t10)  # ASCII, LU, T10 vendor ID
            + _designator(0x01, 0x14, (1).to_bytes(4, "big")))  # target port, relative id
    return body


def block_limits(unit: DiskUnit) -> bytes:
    """Block Limits (SBC-3 6.5.3), page length 3Ch."""
    thin = unit.thin
    return _BLOCK_LIMITS.pack(
        0x01 if unit.WSNZ else 0,  # WSNZ
        unit.MAX_COMPARE_AND_WRITE,
        unit.optimal_granularity,
        unit.max_transfer_blocks,
        unit.max_transfer_blocks,  # OPTIMAL TRANSFER LENGTH
        unit.max_transfer_blocks,  # MAXIMUM PREFETCH LENGTH
        unit.MAX_UNMAP_LBAS if thin else 0,
        unit.MAX_UNMAP_DESCRIPTORS if thin else 0,
        unit.optimal_granularity if thin else 0,  # OPTIMAL UNMAP GRANULARITY
        0,  # UGAVALID = 0
        0,  # MAXIMUM WRITE SAME LENGTH: no limit
        unit.max_transfer_blocks,  # MAXIMUM ATOMIC TRANSFER LENGTH
        0, 0, 0, 0)  # alignment, granularity, with-boundary length, boundary size


def block_characteristics(unit: DiskUnit) -> bytes:
    """Block Device Characteristics (SBC-3 6.5.2): non-rotating medium."""
    del unit
    body = bytearray(0x3C)
    body[0:2] = (1).to_bytes(2, "big")  # MEDIUM ROTATION RATE: non-rotating
    return bytes(body)


def provisioning(unit: DiskUnit) -> bytes:
    """Logical Block Provisioning (SBC-3 6.5.4)."""
    if not unit.thin:
        return bytes(4)
    # LBPU, LBPWS, LBPWS10, LBPRZ; ANC_SUP=0; PROVISIONING TYPE 2 (thin)
    return bytes((0, 0xE4, 0x02, 0))


def extended_inquiry(unit: DiskUnit) -> bytes:
    """Extended INQUIRY Data (SPC-4 7.8.7): HEADSUP/ORDSUP/SIMPSUP, LUICLR."""
    del unit
    body = bytearray(0x3C)
    body[1] = 0x07
    body[3] = 0x01
    return bytes(body)


def unit_serial(unit: DiskUnit) -> bytes:
    """Unit Serial Number (SPC-4 7.8.15): the uuid's 32 hex digits."""
    return unit.identity.serial.encode()


_BUILDERS = {
    SERIAL: unit_serial,
    DEVICE_ID: device_identification,
    EXTENDED: extended_inquiry,
    BLOCK_LIMITS: block_limits,
    BLOCK_CHARACTERISTICS: block_characteristics,
    PROVISIONING: provisioning,
    THIRD_PARTY_COPY: lambda unit: third_party_copy_vpd(),
}


def vpd_page(unit: DiskUnit, code: int) -> bytes | None:
    if code == SUPPORTED:
        return _page(unit, code, bytes(sorted((SUPPORTED, *_BUILDERS))))
    build = _BUILDERS.get(code)
    return None if build is None else _page(unit, code, build(unit))
