"""SBC-3 data transfer commands: READ, WRITE, VERIFY, WRITE AND VERIFY,
COMPARE AND WRITE, ORWRITE and WRITE ATOMIC(16) (SBC-4 5.48).

Clause numbers follow SBC-3 r25 and SPC-4 r37; the command names find them
in any revision.

Data-Out: a write needs ``blocks * block_size`` bytes (``data_out_used``, from
which the transport computes residuals). When fewer arrive (the Expected
Data Transfer Length was smaller than the CDB asks for, libiscsi
iSCSIResiduals), only the whole blocks that did arrive are written and the
status is GOOD with the overflow residual; a partial block is never written.
COMPARE AND WRITE cannot run on partial data and fails instead.

No protection information: a non-zero RDPROTECT/WRPROTECT/VRPROTECT/
ORPROTECT field is INVALID FIELD IN CDB (SBC-3 4.22.2, PROTECT=0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blockyard.scsi.cdb import RW_DECODERS, Rw, check_control, check_flags, u16, u64
from blockyard.scsi.commands import Access, Command, Handler, Request, good, usage
from blockyard.scsi.opcodes import Op, cdb_length
from blockyard.scsi.sense import (
    ILLEGAL_REQUEST,
    INVALID_FIELD_IN_CDB_IU,
    MISCOMPARE,
    MISCOMPARE_DURING_VERIFY,
    ScsiError,
    invalid_cdb,
)
from blockyard.scsi.task import Buffer, ScsiResult

if TYPE_CHECKING:
    from blockyard.scsi.disk import DiskUnit

RW_FLAGS = 0xFA  # PROTECT(7-5) DPO FUA FUA_NV (SBC-3 5.8); bits 2 and 0 reserved
VERIFY_FLAGS = 0xF6  # VRPROTECT DPO BYTCHK(2-1)
_TL_FIELD = {6: 4, 10: 7, 12: 6, 16: 10}  # where TRANSFER LENGTH starts


def _decode(req: Request, allowed: int) -> Rw:
    length = cdb_length(req.cdb[0])
    rw = RW_DECODERS[length](req.cdb)
    if length != 6:
        check_flags(req.cdb, allowed)
        if rw.protect:
            raise invalid_cdb(1, 7)
    check_control(req.cdb, length)
    return rw


def _checked(unit: DiskUnit, req: Request, allowed: int) -> Rw:
    rw = _decode(req, allowed)
    unit.check_range(rw.lba, rw.blocks)
    unit.check_transfer(rw.blocks, _TL_FIELD[rw.length])
    return rw


def _whole_blocks(unit: DiskUnit, data: memoryview) -> memoryview:
    return data[:len(data) - len(data) % unit.block_size]


def first_difference(a: Buffer, b: Buffer) -> int | None:
    """Offset of the first differing byte, or None if equal."""
    ma, mb = memoryview(a).cast("B"), memoryview(b).cast("B")
    if ma == mb:
        return None
    step = 4096
    for off in range(0, min(len(ma), len(mb)), step):
        if ma[off:off + step] != mb[off:off + step]:
            for i in range(off, min(off + step, len(ma), len(mb))):
                if ma[i] != mb[i]:
                    return i
    return min(len(ma), len(mb))


def miscompare(offset: int) -> ScsiError:
    """MISCOMPARE / MISCOMPARE DURING VERIFY, INFORMATION = byte offset (SBC-3 5.2)."""
    return ScsiError(MISCOMPARE, *MISCOMPARE_DURING_VERIFY, info=offset)


async def read(unit: DiskUnit, req: Request) -> ScsiResult:
    """READ(6/10/12/16) (SBC-3 5.9 - 5.12)."""
    rw = _checked(unit, req, RW_FLAGS)
    return good(await unit.read(rw.lba, rw.blocks) if rw.blocks else b"")


async def write(unit: DiskUnit, req: Request) -> ScsiResult:
    """WRITE(6/10/12/16) (SBC-3 5.29 - 5.32)."""
    rw = _checked(unit, req, RW_FLAGS)
    unit.check_writable()
    needed = rw.blocks * unit.block_size
    data = _whole_blocks(unit, req.data_out[:needed])
    if data:
        async with unit.gate.shared():
            await unit.write(rw.lba, data, rw.fua)
    return good(data_out_used=needed)


async def write_verify(unit: DiskUnit, req: Request) -> ScsiResult:
    """WRITE AND VERIFY(10/12/16) (SBC-3 5.34 - 5.36): written through, then read back."""
    rw = _checked(unit, req, VERIFY_FLAGS)
    if rw.bytchk > 1:
        raise invalid_cdb(1, 2)
    unit.check_writable()
    needed = rw.blocks * unit.block_size
    data = _whole_blocks(unit, req.data_out[:needed])
    if data:
        async with unit.gate.shared():
            await unit.write(rw.lba, data, True)
        back = await unit.read(rw.lba, len(data) // unit.block_size)
        diff = first_difference(data, back)
        if diff is not None:
            raise miscompare(diff)
    return good(data_out_used=needed)


async def verify(unit: DiskUnit, req: Request) -> ScsiResult:
    """VERIFY(10/12/16) (SBC-3 5.25 - 5.27): BYTCHK 0 medium check, 1 compare, 3 one block."""
    rw = _checked(unit, req, VERIFY_FLAGS)
    if rw.bytchk == 2:
        raise invalid_cdb(1, 2)
    if rw.blocks == 0:
        return good()
    current = await unit.read(rw.lba, rw.blocks)
    if rw.bytchk == 0:
        return good()
    bs = unit.block_size
    if rw.bytchk == 1:
        needed = rw.blocks * bs
        expect = _whole_blocks(unit, req.data_out[:needed])
    else:
        needed = bs
        one = bytes(req.data_out[:bs])
        expect = memoryview(one * rw.blocks if len(one) == bs else b"")
    diff = first_difference(expect, memoryview(current)[:len(expect)])
    if diff is not None:
        raise miscompare(diff)
    return good(data_out_used=needed)


async def orwrite(unit: DiskUnit, req: Request) -> ScsiResult:
    """ORWRITE(16) (SBC-3 5.5): OR the Data-Out into the blocks, atomically."""
    rw = _checked(unit, req, RW_FLAGS)
    unit.check_writable()
    needed = rw.blocks * unit.block_size
    data = _whole_blocks(unit, req.data_out[:needed])
    if data:
        n = len(data) // unit.block_size
        async with unit.gate.exclusive():
            old = int.from_bytes(await unit.read(rw.lba, n), "big")
            new = (old | int.from_bytes(data, "big")).to_bytes(len(data), "big")
            await unit.write(rw.lba, new, rw.fua)
    return good(data_out_used=needed)


async def compare_and_write(unit: DiskUnit, req: Request) -> ScsiResult:
    """COMPARE AND WRITE (SBC-3 5.2): verify N blocks, then write N blocks, atomically."""
    cdb = req.cdb
    check_flags(cdb, RW_FLAGS)
    if cdb[1] >> 5:
        raise invalid_cdb(1, 7)
    check_control(cdb, 16)
    lba, n, bs = u64(cdb, 2), cdb[13], unit.block_size
    unit.check_range(lba, n)
    unit.check_writable()
    data = req.data_out
    if n == 0:  # nothing to do (SBC-3 5.2), unless the Data-Out could never fit one
        if len(data) > 2 * unit.MAX_COMPARE_AND_WRITE * bs:
            raise invalid_cdb(13)
        return good()
    if len(data) != 2 * n * bs:
        raise ScsiError(ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB_IU)
    async with unit.gate.exclusive():
        diff = first_difference(data[:n * bs], await unit.read(lba, n))
        if diff is not None:
            raise miscompare(diff)
        await unit.write(lba, data[n * bs:], bool(cdb[1] & 0x08))
    return good(data_out_used=2 * n * bs)


async def write_atomic16(unit: DiskUnit, req: Request) -> ScsiResult:
    """WRITE ATOMIC(16) (SBC-4 5.48): all or nothing with respect to other commands."""
    cdb = req.cdb
    check_flags(cdb, 0xF8)
    if cdb[1] >> 5:
        raise invalid_cdb(1, 7)
    check_control(cdb, 16)
    if u16(cdb, 10):
        raise invalid_cdb(10)  # ATOMIC BOUNDARY: no boundary support
    lba, blocks = u64(cdb, 2), u16(cdb, 12)
    unit.check_range(lba, blocks)
    unit.check_transfer(blocks, 12)
    unit.check_writable()
    needed = blocks * unit.block_size
    data = req.data_out[:needed]
    if len(data) != needed:
        raise ScsiError(ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB_IU)
    if data:
        async with unit.gate.exclusive():
            await unit.write(lba, data, bool(cdb[1] & 0x08))
    return good(data_out_used=needed)


def _rw(op: int, name: str, handler: Handler, mask: bytes, access: Access) -> Command:
    return Command(op, None, name, handler, mask, access, needs_medium=True)


_CTL = 0x04
_FL = RW_FLAGS
_V = VERIFY_FLAGS
_L4 = (0xFF,) * 4
_L8 = (0xFF,) * 8

SBC_RW_COMMANDS = [
    _rw(Op.READ_6, "READ(6)", read, usage(0x08, 0x1F, 0xFF, 0xFF, 0xFF, _CTL), Access.READ),
    _rw(Op.WRITE_6, "WRITE(6)", write, usage(0x0A, 0x1F, 0xFF, 0xFF, 0xFF, _CTL), Access.WRITE),
    _rw(Op.READ_10, "READ(10)", read, usage(0x28, _FL, *_L4, 0x1F, 0xFF, 0xFF, _CTL),
        Access.READ),
    _rw(Op.WRITE_10, "WRITE(10)", write, usage(0x2A, _FL, *_L4, 0x1F, 0xFF, 0xFF, _CTL),
        Access.WRITE),
    _rw(Op.WRITE_VERIFY_10, "WRITE AND VERIFY(10)", write_verify,
        usage(0x2E, _V, *_L4, 0x1F, 0xFF, 0xFF, _CTL), Access.WRITE),
    _rw(Op.VERIFY_10, "VERIFY(10)", verify, usage(0x2F, _V, *_L4, 0x1F, 0xFF, 0xFF, _CTL),
        Access.READ),
    _rw(Op.READ_12, "READ(12)", read, usage(0xA8, _FL, *_L4, *_L4, 0x1F, _CTL), Access.READ),
    _rw(Op.WRITE_12, "WRITE(12)", write, usage(0xAA, _FL, *_L4, *_L4, 0x1F, _CTL),
        Access.WRITE),
    _rw(Op.WRITE_VERIFY_12, "WRITE AND VERIFY(12)", write_verify,
        usage(0xAE, _V, *_L4, *_L4, 0x1F, _CTL), Access.WRITE),
    _rw(Op.VERIFY_12, "VERIFY(12)", verify, usage(0xAF, _V, *_L4, *_L4, 0x1F, _CTL),
        Access.READ),
    _rw(Op.READ_16, "READ(16)", read, usage(0x88, _FL, *_L8, *_L4, 0x1F, _CTL), Access.READ),
    _rw(Op.WRITE_16, "WRITE(16)", write, usage(0x8A, _FL, *_L8, *_L4, 0x1F, _CTL),
        Access.WRITE),
    _rw(Op.WRITE_VERIFY_16, "WRITE AND VERIFY(16)", write_verify,
        usage(0x8E, _V, *_L8, *_L4, 0x1F, _CTL), Access.WRITE),
    _rw(Op.VERIFY_16, "VERIFY(16)", verify, usage(0x8F, _V, *_L8, *_L4, 0x1F, _CTL),
        Access.READ),
    _rw(Op.ORWRITE_16, "ORWRITE(16)", orwrite, usage(0x8B, _FL, *_L8, *_L4, 0x1F, _CTL),
        Access.WRITE),
    _rw(Op.COMPARE_AND_WRITE, "COMPARE AND WRITE", compare_and_write,
        usage(0x89, _FL, *_L8, 0, 0, 0, 0xFF, 0x1F, _CTL), Access.WRITE),
    _rw(Op.WRITE_ATOMIC_16, "WRITE ATOMIC(16)", write_atomic16,
        usage(0x9C, 0xF8, *_L8, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, _CTL), Access.WRITE),
]
