"""CDB decoding with precompiled ``struct.Struct`` layouts (per-request path).

Every decoder takes the CDB already padded to 16 bytes (the iSCSI CDB field
is 16 bytes; ``pad_cdb`` does it for shorter ones) and returns a small
NamedTuple. Reserved-bit checks raise ``ScsiError`` INVALID FIELD IN CDB with
the field pointer set (SPC-4 4.5.2.4.2), where libiscsi looks at it.

READ/WRITE/VERIFY families share one ``Rw`` shape: the flags byte (byte 1)
is kept whole and the handlers pick DPO, FUA, BYTCHK and the protect field.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from blockyard.scsi.sense import invalid_cdb

CDB_MIN = 16

_RW6 = struct.Struct(">BBHB")  # opcode, lba[20:16], lba[15:0], length
_RW10 = struct.Struct(">BBIBH")  # opcode, flags, lba, group, length
_RW12 = struct.Struct(">BBIIB")  # opcode, flags, lba, length, group
_RW16 = struct.Struct(">BBQIB")  # opcode, flags, lba, length, group
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

NACA = 0x04  # control byte (SAM-5 5.2)


class Rw(NamedTuple):
    """A block-addressed command: READ, WRITE, VERIFY, WRITE AND VERIFY, ..."""

    lba: int
    blocks: int
    flags: int
    group: int
    length: int  # CDB length, for the control byte

    @property
    def protect(self) -> int:
        """RDPROTECT / WRPROTECT / VRPROTECT / ORPROTECT (SBC-3 byte 1 bits 7-5)."""
        return self.flags >> 5

    @property
    def dpo(self) -> bool:
        return bool(self.flags & 0x10)

    @property
    def fua(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def bytchk(self) -> int:
        """BYTCHK of VERIFY / WRITE AND VERIFY (SBC-3 5.25, bits 2-1)."""
        return (self.flags >> 1) & 0x03


def pad_cdb(cdb: bytes) -> bytes:
    return cdb if len(cdb) >= CDB_MIN else cdb + bytes(CDB_MIN - len(cdb))


def u16(cdb: bytes, off: int) -> int:
    return int(_U16.unpack_from(cdb, off)[0])


def u32(cdb: bytes, off: int) -> int:
    return int(_U32.unpack_from(cdb, off)[0])


def u64(cdb: bytes, off: int) -> int:
    return int(_U64.unpack_from(cdb, off)[0])


def rw6(cdb: bytes) -> Rw:
    """READ(6)/WRITE(6) (SBC-3 5.9/5.29): length 0 means 256 blocks."""
    _, hi, lo, n = _RW6.unpack_from(cdb)
    if hi & 0xE0:
        raise invalid_cdb(1, 7)
    return Rw(((hi & 0x1F) << 16) | lo, n or 256, 0, 0, 6)


def rw10(cdb: bytes) -> Rw:
    _, flags, lba, group, n = _RW10.unpack_from(cdb)
    return Rw(lba, n, flags, group & 0x1F, 10)


def rw12(cdb: bytes) -> Rw:
    _, flags, lba, n, group = _RW12.unpack_from(cdb)
    return Rw(lba, n, flags, group & 0x1F, 12)


def rw16(cdb: bytes) -> Rw:
    _, flags, lba, n, group = _RW16.unpack_from(cdb)
    return Rw(lba, n, flags, group & 0x1F, 16)


RW_DECODERS = {6: rw6, 10: rw10, 12: rw12, 16: rw16}


def check_flags(cdb: bytes, allowed: int) -> None:
    """Byte 1 may only carry the ``allowed`` bits (SPC-4 2.4: reserved = 0)."""
    bad = cdb[1] & ~allowed & 0xFF
    if bad:
        raise invalid_cdb(1, bad.bit_length() - 1)


def check_control(cdb: bytes, length: int) -> None:
    """NACA=1 without ACA support is INVALID FIELD IN CDB (SAM-5 5.2)."""
    if cdb[length - 1] & NACA:
        raise invalid_cdb(length - 1, 2)


def check_zero(cdb: bytes, *offsets: int) -> None:
    """Whole reserved bytes must be zero."""
    for off in offsets:
        if cdb[off]:
            raise invalid_cdb(off, cdb[off].bit_length() - 1)


def alloc_len6(cdb: bytes) -> int:
    """Allocation length of 6-byte CDBs (byte 4)."""
    return cdb[4]


def truncate(data: bytes | bytearray, alloc: int) -> bytes:
    """Data-In is cut to the allocation length (SPC-4 4.2.5.6)."""
    return bytes(data[:alloc])


def encode_lun(lun: int) -> bytes:
    """8-byte LUN field: peripheral (< 256) or flat (< 16384) addressing (SAM-5 4.7)."""
    if lun < 0 or lun >= 0x4000:
        raise ValueError(f"LUN {lun} out of range")
    if lun < 256:
        return bytes((0, lun)) + bytes(6)
    return bytes((0x40 | (lun >> 8), lun & 0xFF)) + bytes(6)


def decode_lun(field: bytes) -> int:
    """Inverse of ``encode_lun``; other address methods give -1 (no such LUN)."""
    method = field[0] >> 6
    if method == 0 and field[0] == 0:
        return field[1]
    if method == 1:
        return ((field[0] & 0x3F) << 8) | field[1]
    return -1
