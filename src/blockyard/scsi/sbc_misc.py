"""SBC-3 commands other than data transfer: capacity, cache, provisioning, medium.

READ CAPACITY(10/16), SYNCHRONIZE CACHE(10/16), PRE-FETCH(10/16), UNMAP,
WRITE SAME(10/16), GET LBA STATUS, START STOP UNIT, PREVENT ALLOW MEDIUM
REMOVAL and READ DEFECT DATA(10/12).
Clause numbers follow SBC-3 r25.

Provisioning (SBC-3 4.7): a thin unit (LBPME=1) unmaps through
``Layer.zero(may_trim=True)``, so unmapped blocks read as zeroes (LBPRZ=1)
whatever the layer does with the space. GET LBA STATUS reports a block as
deallocated only when the layer's extents show the whole block as a hole.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from blockyard.block.layer import HOLE, Extent
from blockyard.scsi.cdb import check_control, check_flags, u16, u32, u64
from blockyard.scsi.commands import Access, Command, Handler, Request, good, usage
from blockyard.scsi.opcodes import Op, SaIn16
from blockyard.scsi.sense import (
    ILLEGAL_REQUEST,
    INVALID_FIELD_IN_CDB_IU,
    MEDIUM_REMOVAL_PREVENTED,
    ScsiError,
    invalid_cdb,
    invalid_param,
    lba_out_of_range,
    param_list_length_error,
)
from blockyard.scsi.task import ScsiResult

if TYPE_CHECKING:
    from blockyard.scsi.disk import DiskUnit

_RC16 = struct.Struct(">QIBBH16x")
_LBA_STATUS = struct.Struct(">QIB3x")
_UNMAP_DESC = struct.Struct(">QI4x")
STATUS_WINDOW = 1 << 17  # blocks examined by one GET LBA STATUS
MAPPED, DEALLOCATED = 0, 1
FILL_CHUNK = 1 << 20


async def read_capacity10(unit: DiskUnit, req: Request) -> ScsiResult:
    """READ CAPACITY(10) (SBC-3 5.14): 0xFFFFFFFF when the LBA does not fit."""
    cdb = req.cdb
    check_flags(cdb, 0x00)
    check_control(cdb, 10)
    if not cdb[8] & 0x01 and u32(cdb, 2):
        raise invalid_cdb(2)  # LBA without PMI
    last = min(unit.capacity_blocks - 1, 0xFFFFFFFF)
    return good(struct.pack(">II", last, unit.block_size))


async def read_capacity16(unit: DiskUnit, req: Request) -> ScsiResult:
    """READ CAPACITY(16) (SBC-3 5.15): LBPME and LBPRZ for a thin unit, LBPPBE 0."""
    cdb = req.cdb
    check_control(cdb, 16)
    if not cdb[14] & 0x01 and u64(cdb, 2):
        raise invalid_cdb(2)
    flags = 0xC000 if unit.thin else 0  # LBPME, LBPRZ
    data = _RC16.pack(unit.capacity_blocks - 1, unit.block_size, 0, 0, flags)
    return good(data[:u32(cdb, 10)])


def _lba_count(cdb: bytes) -> tuple[int, int]:
    if cdb[0] in (Op.SYNCHRONIZE_CACHE_10, Op.PRE_FETCH_10):
        check_control(cdb, 10)
        return u32(cdb, 2), u16(cdb, 7)
    check_control(cdb, 16)
    return u64(cdb, 2), u32(cdb, 10)


async def synchronize_cache(unit: DiskUnit, req: Request) -> ScsiResult:
    """SYNCHRONIZE CACHE(10/16) (SBC-3 5.22/5.23): flushes the whole layer."""
    check_flags(req.cdb, 0x06)  # SYNC_NV, IMMED
    lba, blocks = _lba_count(req.cdb)
    unit.check_range(lba, blocks)
    await unit.layer.flush()
    return good()


async def pre_fetch(unit: DiskUnit, req: Request) -> ScsiResult:
    """PRE-FETCH(10/16) (SBC-3 5.6/5.7).

    The layer's cache hint gives no guarantee that the blocks stay cached, so
    the answer is GOOD, not CONDITION MET (libiscsi expects GOOD as well).
    """
    check_flags(req.cdb, 0x02)  # IMMED
    lba, blocks = _lba_count(req.cdb)
    unit.check_range(lba, blocks)
    if blocks:
        await unit.layer.cache(lba * unit.block_size, blocks * unit.block_size)
    return good()


async def unmap(unit: DiskUnit, req: Request) -> ScsiResult:
    """UNMAP (SBC-3 5.24): every descriptor is checked before any block is unmapped."""
    cdb = req.cdb
    check_flags(cdb, 0x01)
    check_control(cdb, 10)
    if cdb[1] & 0x01:
        raise invalid_cdb(1, 0)  # ANCHOR: ANC_SUP=0
    plen = u16(cdb, 7)
    if plen == 0:
        return good()
    params = bytes(req.data_out[:plen])
    if plen < 8 or len(params) < plen:
        raise param_list_length_error()
    unit.check_writable()
    ranges = _unmap_ranges(unit, params)
    bs = unit.block_size
    async with unit.gate.shared():
        for lba, count in ranges:
            await unit.layer.zero(lba * bs, count * bs, may_trim=True)
    return good(data_out_used=plen)


def _unmap_ranges(unit: DiskUnit, params: bytes) -> list[tuple[int, int]]:
    bd_len = min(u16(params, 2), len(params) - 8)
    count = bd_len // 16
    if count > unit.MAX_UNMAP_DESCRIPTORS:
        raise invalid_param(2)
    ranges, total = [], 0
    for i in range(count):
        lba, blocks = _UNMAP_DESC.unpack_from(params, 8 + 16 * i)
        unit.check_range(lba, blocks)
        total += blocks
        if blocks:
            ranges.append((lba, blocks))
    if total > unit.MAX_UNMAP_LBAS:
        raise invalid_param(8 + 8)
    return ranges


async def write_same(unit: DiskUnit, req: Request) -> ScsiResult:
    """WRITE SAME(10/16) (SBC-3 5.40/5.41), UNMAP bit, NDOB (SBC-4), no ANCHOR."""
    cdb = req.cdb
    ws16 = cdb[0] == Op.WRITE_SAME_16
    check_flags(cdb, 0xF9 if ws16 else 0xF8)  # LBDATA/PBDATA are obsolete
    lba, blocks = (u64(cdb, 2), u32(cdb, 10)) if ws16 else (u32(cdb, 2), u16(cdb, 7))
    anchor, unmap_bit, ndob = cdb[1] & 0x10, cdb[1] & 0x08, ws16 and cdb[1] & 0x01
    if cdb[1] >> 5:
        raise invalid_cdb(1, 7)
    if anchor:
        raise invalid_cdb(1, 4)  # ANCHOR needs UNMAP, and ANC_SUP=0 anyway
    unit.check_writable()  # DATA PROTECT before an unsupported UNMAP bit (libiscsi ReadOnly)
    if unmap_bit and not unit.thin:
        raise invalid_cdb(1, 3)
    check_control(cdb, 16 if ws16 else 10)
    if blocks == 0:
        if unit.WSNZ:
            raise invalid_cdb(10 if ws16 else 7)
        if lba > unit.capacity_blocks:
            raise lba_out_of_range()
        blocks = unit.capacity_blocks - lba
    unit.check_range(lba, blocks)
    bs = unit.block_size
    if ndob:
        pattern, used = bytes(bs), 0
    else:
        if len(req.data_out) != bs:
            raise ScsiError(ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB_IU)
        pattern, used = bytes(req.data_out), bs
    if blocks:
        async with unit.gate.shared():
            await _fill(unit, lba, blocks, pattern, bool(unmap_bit))
    return good(data_out_used=used)


async def _fill(unit: DiskUnit, lba: int, blocks: int, pattern: bytes, unmap: bool) -> None:
    """UNMAP=1 unmaps whatever the pattern (SBC-3 5.41; libiscsi and LIO agree): with
    LBPRZ=1 the blocks then read as zeroes."""
    bs = unit.block_size
    if unmap or not any(pattern):
        await unit.layer.zero(lba * bs, blocks * bs, may_trim=unmap)
        return
    per_chunk = max(1, FILL_CHUNK // bs)
    chunk = pattern * min(per_chunk, blocks)
    while blocks:
        n = min(per_chunk, blocks)
        await unit.write(lba, memoryview(chunk)[:n * bs])
        lba += n
        blocks -= n


async def get_lba_status(unit: DiskUnit, req: Request) -> ScsiResult:
    """GET LBA STATUS (SBC-3 5.4): mapped / deallocated runs from the layer's extents."""
    cdb = req.cdb
    check_control(cdb, 16)
    start, alloc = u64(cdb, 2), u32(cdb, 10)
    if start >= unit.capacity_blocks:
        raise lba_out_of_range()
    window = min(unit.capacity_blocks - start, STATUS_WINDOW)
    runs = await _status_runs(unit, start, window)
    body = b"".join(_LBA_STATUS.pack(lba, n, state) for lba, n, state in runs)
    data = (len(body) + 4).to_bytes(4, "big") + bytes(4) + body
    return good(data[:alloc])


async def _status_runs(unit: DiskUnit, start: int, blocks: int) -> list[tuple[int, int, int]]:
    bs = unit.block_size
    if not unit.layer.can_extents:
        return [(start, blocks, MAPPED)]
    extents = await unit.layer.extents(start * bs, blocks * bs)
    holes = _hole_blocks(extents, start * bs, bs)
    runs: list[tuple[int, int, int]] = []
    pos, end = start, start + blocks
    for first, last in holes:
        if first > pos:
            runs.append((pos, first - pos, MAPPED))
        runs.append((first, last - first, DEALLOCATED))
        pos = last
    if pos < end:
        runs.append((pos, end - pos, MAPPED))
    return runs


def _hole_blocks(extents: list[Extent], offset: int, bs: int) -> list[tuple[int, int]]:
    """Block intervals [first, last) lying entirely inside hole extents."""
    out: list[tuple[int, int]] = []
    run_start: int | None = None
    for length, flags in [*extents, Extent(0, 0)]:
        if flags & HOLE and length:
            run_start = offset if run_start is None else run_start
        elif run_start is not None:
            first, last = -(-run_start // bs), offset // bs
            if first < last:
                out.append((first, last))
            run_start = None
        offset += length
    return out


async def start_stop_unit(unit: DiskUnit, req: Request) -> ScsiResult:
    """START STOP UNIT (SBC-3 5.21): LOEJ ejects / loads a removable medium."""
    cdb = req.cdb
    check_flags(cdb, 0x01)  # IMMED
    if cdb[4] & 0x08:
        raise invalid_cdb(4, 3)
    check_control(cdb, 6)
    if cdb[4] >> 4:
        return good()  # a power condition: nothing changes for a virtual disk
    loej, start, no_flush = cdb[4] & 0x02, cdb[4] & 0x01, cdb[4] & 0x04
    if not start and not no_flush and unit.medium_present:
        await unit.layer.flush()
    if not loej:
        return good()
    if not unit.removable:
        raise invalid_cdb(4, 1)
    if unit.prevent:
        raise ScsiError(ILLEGAL_REQUEST, *MEDIUM_REMOVAL_PREVENTED)
    unit.set_medium(bool(start), req.nexus)
    return good()


async def prevent_allow(unit: DiskUnit, req: Request) -> ScsiResult:
    """PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.8), kept per I_T nexus."""
    cdb = req.cdb
    check_flags(cdb, 0x00)
    if cdb[2] or cdb[3] or cdb[4] & 0xFC:
        raise invalid_cdb(4 if cdb[4] & 0xFC else 2)
    check_control(cdb, 6)
    if cdb[4] & 0x03 == 1:
        unit.prevent.add(req.nexus)
    elif cdb[4] & 0x03 == 0:
        unit.prevent.discard(req.nexus)
    else:
        raise invalid_cdb(4, 1)
    return good()


async def read_defect_data(unit: DiskUnit, req: Request) -> ScsiResult:
    """READ DEFECT DATA(10/12) (SBC-3 5.16/5.17): an empty list in the requested format."""
    cdb = req.cdb
    del unit
    if cdb[0] == Op.READ_DEFECT_DATA_10:
        check_control(cdb, 10)
        head = bytes((0, cdb[2] & 0x1F, 0, 0))
        return good(head[:u16(cdb, 7)])
    check_control(cdb, 12)
    head = bytes((0, cdb[1] & 0x1F)) + bytes(6)
    return good(head[:u32(cdb, 6)])


def _cmd(op: int, name: str, handler: Handler, mask: bytes, access: Access,
         sa: int | None = None, medium: bool = True) -> Command:
    return Command(op, sa, name, handler, mask, access, needs_medium=medium)


def _thin(unit: object) -> bool:
    return bool(getattr(unit, "thin", False))


_CTL = 0x04
_L4 = (0xFF,) * 4
_L8 = (0xFF,) * 8

SBC_MISC_COMMANDS = [
    _cmd(Op.READ_CAPACITY_10, "READ CAPACITY(10)", read_capacity10,
         usage(0x25, 0, *_L4, 0, 0, 0x01, _CTL), Access.FREE),
    _cmd(Op.SERVICE_ACTION_IN_16, "READ CAPACITY(16)", read_capacity16,
         usage(0x9E, 0x1F, *_L8, *_L4, 0x01, _CTL), Access.FREE, SaIn16.READ_CAPACITY_16),
    _cmd(Op.SERVICE_ACTION_IN_16, "GET LBA STATUS", get_lba_status,
         usage(0x9E, 0x1F, *_L8, *_L4, 0, _CTL), Access.READ, SaIn16.GET_LBA_STATUS),
    _cmd(Op.SYNCHRONIZE_CACHE_10, "SYNCHRONIZE CACHE(10)", synchronize_cache,
         usage(0x35, 0x06, *_L4, 0x1F, 0xFF, 0xFF, _CTL), Access.WRITE),
    _cmd(Op.SYNCHRONIZE_CACHE_16, "SYNCHRONIZE CACHE(16)", synchronize_cache,
         usage(0x91, 0x06, *_L8, *_L4, 0x1F, _CTL), Access.WRITE),
    _cmd(Op.PRE_FETCH_10, "PRE-FETCH(10)", pre_fetch,
         usage(0x34, 0x02, *_L4, 0x1F, 0xFF, 0xFF, _CTL), Access.READ),
    _cmd(Op.PRE_FETCH_16, "PRE-FETCH(16)", pre_fetch,
         usage(0x90, 0x02, *_L8, *_L4, 0x1F, _CTL), Access.READ),
    _cmd(Op.WRITE_SAME_10, "WRITE SAME(10)", write_same,
         usage(0x41, 0xF8, *_L4, 0x1F, 0xFF, 0xFF, _CTL), Access.WRITE),
    _cmd(Op.WRITE_SAME_16, "WRITE SAME(16)", write_same,
         usage(0x93, 0xF9, *_L8, *_L4, 0x1F, _CTL), Access.WRITE),
    Command(Op.UNMAP, None, "UNMAP", unmap, usage(0x42, 0x01, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, _CTL),
            Access.WRITE, needs_medium=True, available=_thin),
    _cmd(Op.START_STOP_UNIT, "START STOP UNIT", start_stop_unit,
         usage(0x1B, 0x01, 0, 0x0F, 0xF7, _CTL), Access.WRITE, medium=False),
    _cmd(Op.PREVENT_ALLOW, "PREVENT ALLOW MEDIUM REMOVAL", prevent_allow,
         usage(0x1E, 0, 0, 0, 0x03, _CTL), Access.WRITE, medium=False),
    _cmd(Op.READ_DEFECT_DATA_10, "READ DEFECT DATA(10)", read_defect_data,
         usage(0x37, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, _CTL), Access.READ),
    _cmd(Op.READ_DEFECT_DATA_12, "READ DEFECT DATA(12)", read_defect_data,
         usage(0xB7, 0x1F, *_L4, *_L4, 0, _CTL), Access.READ),
]
