"""CDB and parameter-list builders for the SCSI layer tests (independent of src/)."""

from __future__ import annotations

import struct

from blockyard.scsi.sense import parse_fixed_sense
from blockyard.scsi.task import Nexus, ScsiCommand, ScsiResult, Status

TARGET_PORT = "iqn.2024-01.test.blockyard:disk,t,0x0001"
I1 = Nexus("iqn.2024-01.test:init1,i,0x400000000001", TARGET_PORT)
I2 = Nexus("iqn.2024-01.test:init2,i,0x400000000002", TARGET_PORT)
I3 = Nexus("iqn.2024-01.test:init3,i,0x400000000003", TARGET_PORT)


def tur() -> bytes:
    return bytes(6)


def inquiry(evpd: int = 0, page: int = 0, alloc: int = 255) -> bytes:
    return struct.pack(">BBBHB", 0x12, evpd, page, alloc, 0)


def request_sense(alloc: int = 252, desc: int = 0) -> bytes:
    return bytes((0x03, desc, 0, 0, alloc, 0))


def read6(lba: int, n: int) -> bytes:
    return struct.pack(">BBHBB", 0x08, (lba >> 16) & 0x1F, lba & 0xFFFF, n & 0xFF, 0)


def write6(lba: int, n: int) -> bytes:
    return struct.pack(">BBHBB", 0x0A, (lba >> 16) & 0x1F, lba & 0xFFFF, n & 0xFF, 0)


def rw10(op: int, lba: int, n: int, flags: int = 0, group: int = 0) -> bytes:
    return struct.pack(">BBIBHB", op, flags, lba & 0xFFFFFFFF, group, n, 0)


def rw12(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIIBB", op, flags, lba & 0xFFFFFFFF, n, 0, 0)


def rw16(op: int, lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", op, flags, lba & (2**64 - 1), n, 0, 0)


def read10(lba: int, n: int, flags: int = 0) -> bytes:
    return rw10(0x28, lba, n, flags)


def write10(lba: int, n: int, flags: int = 0) -> bytes:
    return rw10(0x2A, lba, n, flags)


def read16(lba: int, n: int, flags: int = 0) -> bytes:
    return rw16(0x88, lba, n, flags)


def write16(lba: int, n: int, flags: int = 0) -> bytes:
    return rw16(0x8A, lba, n, flags)


def verify10(lba: int, n: int, bytchk: int = 0, flags: int = 0) -> bytes:
    return rw10(0x2F, lba, n, flags | (bytchk << 1))


def caw(lba: int, n: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, flags, lba, n, 0, 0)


def write_same10(lba: int, n: int, flags: int = 0) -> bytes:
    return rw10(0x41, lba, n, flags)


def write_same16(lba: int, n: int, flags: int = 0) -> bytes:
    return rw16(0x93, lba, n, flags)


def unmap(plen: int, anchor: int = 0) -> bytes:
    return struct.pack(">BB5xHB", 0x42, anchor, plen, 0)


def unmap_params(*ranges: tuple[int, int]) -> bytes:
    body = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    return struct.pack(">HH4x", len(body) + 6, len(body)) + body


def read_capacity10() -> bytes:
    return bytes((0x25,)) + bytes(9)


def read_capacity16(alloc: int = 32) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, 0x10, 0, alloc, 0, 0)


def get_lba_status(lba: int, alloc: int = 24) -> bytes:
    return struct.pack(">BBQIBB", 0x9E, 0x12, lba, alloc, 0, 0)


def sync_cache10(lba: int = 0, n: int = 0) -> bytes:
    return rw10(0x35, lba, n)


def mode_sense6(page: int, pc: int = 0, dbd: int = 0, subpage: int = 0,
                alloc: int = 255) -> bytes:
    return bytes((0x1A, dbd << 3, (pc << 6) | page, subpage, alloc, 0))


def mode_sense10(page: int, pc: int = 0, dbd: int = 0, llbaa: int = 0,
                 alloc: int = 1024) -> bytes:
    return struct.pack(">BBBB3xHB", 0x5A, (llbaa << 4) | (dbd << 3), (pc << 6) | page, 0,
                       alloc, 0)


def mode_select6(plen: int, pf: int = 1, sp: int = 0) -> bytes:
    return bytes((0x15, (pf << 4) | sp, 0, 0, plen, 0))


def start_stop(loej: int, start: int, immed: int = 0, pc: int = 0) -> bytes:
    return bytes((0x1B, immed, 0, 0, (pc << 4) | (loej << 1) | start, 0))


def prevent_allow(prevent: int) -> bytes:
    return bytes((0x1E, 0, 0, 0, prevent, 0))


def report_luns(select: int = 0, alloc: int = 4096) -> bytes:
    return struct.pack(">BxB3xIxB", 0xA0, select, alloc, 0)


def rsoc(options: int = 0, opcode: int = 0, sa: int = 0, rctd: int = 0,
         alloc: int = 65535) -> bytes:
    return struct.pack(">BBBBHIxB", 0xA3, 0x0C, (rctd << 7) | options, opcode, sa, alloc, 0)


def reserve6() -> bytes:
    return bytes((0x16, 0, 0, 0, 0, 0))


def release6() -> bytes:
    return bytes((0x17, 0, 0, 0, 0, 0))


def pr_in(sa: int, alloc: int = 8192) -> bytes:
    return struct.pack(">BB5xHB", 0x5E, sa, alloc, 0)


def pr_out(sa: int, rtype: int = 0, scope: int = 0, plen: int = 24) -> bytes:
    return struct.pack(">BBB2xIB", 0x5F, sa, (scope << 4) | rtype, plen, 0)


def pr_params(rk: int = 0, sark: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">QQ4xBx2x", rk, sark, flags)


def cmd(cdb: bytes, data_out: bytes | None = None, nexus: Nexus = I1, lun: int = 0,
        expected_in: int = 1 << 20) -> ScsiCommand:
    return ScsiCommand(cdb=cdb, lun=lun, nexus=nexus, data_out=data_out, expected_in=expected_in)


def sense_of(result: ScsiResult) -> tuple[int, int, int]:
    assert result.status == Status.CHECK_CONDITION, result
    return parse_fixed_sense(result.sense)
