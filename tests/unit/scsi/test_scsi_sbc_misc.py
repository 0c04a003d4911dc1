"""Capacity, cache, UNMAP, WRITE SAME, GET LBA STATUS, START STOP, PREVENT ALLOW, defects."""

from __future__ import annotations

import struct

import pytest
from scsi_cdbs import (
    I2,
    get_lba_status,
    prevent_allow,
    read10,
    read_capacity10,
    read_capacity16,
    rw10,
    rw16,
    start_stop,
    sync_cache10,
    tur,
    unmap,
    unmap_params,
    write10,
    write_same10,
    write_same16,
)
from scsi_harness import BLOCKS, BS, Harness, make
from test_scsi_inquiry import NoTrim

from blockyard.block.ram import PAGE
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskOptions, DiskUnit
from blockyard.scsi.sense import (
    DATA_PROTECT,
    ILLEGAL_REQUEST,
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_CDB_IU,
    INVALID_FIELD_IN_PARAM_LIST,
    INVALID_OPCODE,
    LBA_OUT_OF_RANGE,
    MEDIUM_MAY_HAVE_CHANGED,
    MEDIUM_NOT_PRESENT,
    MEDIUM_REMOVAL_PREVENTED,
    NOT_READY,
    PARAMETER_LIST_LENGTH_ERROR,
    UNIT_ATTENTION,
    WRITE_PROTECTED,
)

OOB = (ILLEGAL_REQUEST, *LBA_OUT_OF_RANGE)
BAD_CDB = (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
PER_PAGE = PAGE // BS


async def test_read_capacity(h: Harness) -> None:
    assert struct.unpack(">II", await h.ok(read_capacity10())) == (BLOCKS - 1, BS)
    rc16 = await h.ok(read_capacity16())
    last, bs, prot, exp, flags = struct.unpack_from(">QIBBH", rc16)
    assert (last, bs, prot, exp) == (BLOCKS - 1, BS, 0, 0) and flags & 0xC000 == 0xC000
    assert len(rc16) == 32 and await h.ok(read_capacity16(15)) == rc16[:15]
    assert await h.sense(bytes((0x25, 0, 0, 0, 0, 1)) + bytes(4)) == BAD_CDB  # LBA, no PMI


async def test_read_capacity16_full_provisioning() -> None:
    h = Harness(ScsiTargetDevice({0: DiskUnit(NoTrim(1 << 20))}), NoTrim(1))
    await h.clear_ua()
    assert struct.unpack_from(">H", await h.ok(read_capacity16()), 14)[0] & 0xC000 == 0


async def test_synchronize_cache_and_prefetch(h: Harness) -> None:
    before = h.ram.flushes
    await h.ok(sync_cache10())
    await h.ok(rw16(0x91, 10, 5, 0x02))
    assert h.ram.flushes == before + 2
    assert await h.sense(sync_cache10(BLOCKS, 1)) == OOB
    for cdb in (rw10(0x34, 0, 8, 0x02), rw16(0x90, BLOCKS - 1, 1), rw10(0x34, BLOCKS, 0)):
        assert await h.status(cdb) == 0  # GOOD, never CONDITION MET
    assert await h.sense(rw10(0x34, BLOCKS, 1)) == OOB


async def test_unmap_deallocates_and_reads_zero(h: Harness) -> None:
    await h.ok(write10(0, 64), b"a" * 64 * BS)
    params = unmap_params((0, 32), (40, 3))
    result = await h.run(unmap(len(params)), params)
    assert result.status == 0 and result.data_out_used == len(params)
    data = await h.ok(read10(0, 64))
    assert data == bytes(32 * BS) + b"a" * 8 * BS + bytes(3 * BS) + b"a" * 21 * BS
    assert not any(h.ram.allocated[0:32 // PER_PAGE])


async def test_unmap_checks(h: Harness) -> None:
    await h.ok(unmap(0))
    await h.ok(unmap(24), unmap_params((BLOCKS, 0)))
    await h.ok(unmap(8), unmap_params())
    assert await h.sense(unmap(7), bytes(7)) == (ILLEGAL_REQUEST, *PARAMETER_LIST_LENGTH_ERROR)
    assert await h.sense(unmap(24), unmap_params((BLOCKS - 1, 2))) == OOB
    many = unmap_params(*[(i, 1) for i in range(2049)])
    assert await h.sense(unmap(len(many)), many) == (ILLEGAL_REQUEST,
                                                     *INVALID_FIELD_IN_PARAM_LIST)
    assert await h.sense(unmap(24, anchor=1), unmap_params((0, 1))) == BAD_CDB
    await h.ok(write10(0, 1), b"z" * BS)
    bad = unmap_params((0, 1), (BLOCKS, 1))
    assert await h.sense(unmap(len(bad)), bad) == OOB
    assert await h.ok(read10(0, 1)) == b"z" * BS  # nothing unmapped on error


async def test_unmap_needs_thin_provisioning() -> None:
    h = Harness(ScsiTargetDevice({0: DiskUnit(NoTrim(1 << 20))}), NoTrim(1))
    await h.clear_ua()
    assert await h.sense(unmap(24), unmap_params((0, 1))) == (ILLEGAL_REQUEST, *INVALID_OPCODE)
    assert await h.sense(write_same10(0, 1, 0x08), bytes(BS)) == BAD_CDB


async def test_write_same_pattern(h: Harness) -> None:
    block = bytes(range(256)) * 2
    await h.ok(write_same10(3, 5), block)
    assert await h.ok(read10(3, 5)) == block * 5
    await h.ok(write_same16(BLOCKS - 2, 2), block)
    assert await h.ok(read10(BLOCKS - 2, 2)) == block * 2


async def test_write_same_unmap_and_ndob(h: Harness) -> None:
    await h.ok(write10(0, 16), b"x" * 16 * BS)
    await h.ok(write_same10(0, 8, 0x08), bytes(BS))
    assert await h.ok(read10(0, 16)) == bytes(8 * BS) + b"x" * 8 * BS
    assert h.ram.allocated[0] == 0
    result = await h.run(write_same16(8, 8, 0x09))  # UNMAP + NDOB, no data
    assert result.status == 0 and result.data_out_used == 0
    assert await h.ok(read10(8, 8)) == bytes(8 * BS)
    await h.ok(write10(0, 4), b"w" * 4 * BS)
    await h.ok(write_same10(0, 4, 0x08), b"p" * BS)  # UNMAP wins over the pattern
    assert await h.ok(read10(0, 4)) == bytes(4 * BS)


async def test_write_same_zero_blocks_means_to_the_end(h: Harness) -> None:
    await h.ok(write10(BLOCKS - 3, 3), b"y" * 3 * BS)
    await h.ok(write_same16(BLOCKS - 2, 0, 0x08), bytes(BS))
    assert await h.ok(read10(BLOCKS - 3, 3)) == b"y" * BS + bytes(2 * BS)
    assert await h.sense(write_same10(BLOCKS + 1, 0), bytes(BS)) == OOB


async def test_write_same_checks(h: Harness) -> None:
    assert await h.sense(write_same10(0, 1, 0x10), bytes(BS)) == BAD_CDB  # ANCHOR w/o UNMAP
    assert await h.sense(write_same10(0, 1, 0x18), bytes(BS)) == BAD_CDB  # no ANC_SUP
    assert await h.sense(write_same10(0, 1, 0x20), bytes(BS)) == BAD_CDB  # WRPROTECT
    assert await h.sense(write_same10(0, 1, 0x02), bytes(BS)) == BAD_CDB  # LBDATA
    for size in (BS // 2, 2 * BS):
        assert await h.sense(write_same10(0, 1), bytes(size)) == (ILLEGAL_REQUEST,
                                                                  *INVALID_FIELD_IN_CDB_IU)
    for lba, n in ((BLOCKS, 1), (BLOCKS - 1, 2), (2**63, 1)):
        assert await h.sense(write_same16(lba, n), bytes(BS)) == OOB


async def test_get_lba_status(h: Harness) -> None:
    await h.ok(write10(0, 4 * PER_PAGE), b"m" * 4 * PER_PAGE * BS)
    params = unmap_params((PER_PAGE, 2 * PER_PAGE))
    await h.ok(unmap(len(params)), params)
    data = await h.ok(get_lba_status(0, 4096))
    length = struct.unpack_from(">I", data)[0]
    runs = [struct.unpack_from(">QIB", data, 8 + 16 * i) for i in range((length - 4) // 16)]
    assert runs[:3] == [(0, PER_PAGE, 0), (PER_PAGE, 2 * PER_PAGE, 1),
                        (3 * PER_PAGE, PER_PAGE, 0)]
    assert sum(r[1] for r in runs) == BLOCKS
    one = await h.ok(get_lba_status(PER_PAGE + 1, 24))
    assert len(one) == 24 and struct.unpack_from(">QIB", one, 8) == (
        PER_PAGE + 1, 2 * PER_PAGE - 1, 1)
    for lba in (BLOCKS, BLOCKS + 1, 2**63, 2**64 - 1):
        assert await h.sense(get_lba_status(lba)) == OOB


async def test_partial_page_unmap_stays_mapped(h: Harness) -> None:
    await h.ok(write10(0, PER_PAGE), b"m" * PER_PAGE * BS)
    await h.ok(unmap(24), unmap_params((1, 2)))
    data = await h.ok(get_lba_status(0, 24))
    assert struct.unpack_from(">QIB", data, 8)[2] == 0


async def test_writes_on_read_only_unit() -> None:
    h = make(DiskOptions(read_only=True))
    await h.clear_ua()
    wp = (DATA_PROTECT, *WRITE_PROTECTED)
    assert await h.sense(write_same10(0, 1), bytes(BS)) == wp
    assert await h.sense(write_same16(0, 1, 0x08), bytes(BS)) == wp
    assert await h.sense(unmap(24), unmap_params((0, 1))) == wp


async def test_write_protection_comes_before_an_unsupported_unmap_bit() -> None:
    h = Harness(ScsiTargetDevice({0: DiskUnit(NoTrim(1 << 20, read_only=True))}), NoTrim(1))
    await h.clear_ua()
    assert await h.sense(write_same10(0, 1, 0x08)) == (DATA_PROTECT, *WRITE_PROTECTED)


async def removable() -> Harness:
    h = make(DiskOptions(removable=True))
    await h.clear_ua()
    await h.clear_ua(I2)
    return h


async def test_eject_and_load() -> None:
    h = await removable()
    no_medium = (NOT_READY, *MEDIUM_NOT_PRESENT)
    await h.ok(start_stop(1, 0, immed=1))
    assert await h.sense(tur()) == no_medium
    assert await h.sense(read10(0, 1)) == no_medium
    assert await h.sense(read_capacity10()) == no_medium
    await h.ok(start_stop(1, 1))
    await h.ok(tur())
    assert await h.sense(tur(), nexus=I2) == (UNIT_ATTENTION, *MEDIUM_MAY_HAVE_CHANGED)


async def test_power_conditions_and_no_loej_keep_the_medium() -> None:
    h = await removable()
    for pc in range(1, 16):
        await h.ok(start_stop(1, 0, pc=pc))
        await h.ok(tur())
    for start in (0, 1):
        await h.ok(start_stop(0, start))
        await h.ok(tur())


async def test_prevent_blocks_eject_and_load_per_nexus() -> None:
    h = await removable()
    prevented = (ILLEGAL_REQUEST, *MEDIUM_REMOVAL_PREVENTED)
    await h.ok(prevent_allow(1))
    assert await h.sense(start_stop(1, 0)) == prevented
    assert await h.sense(start_stop(1, 0), nexus=I2) == prevented
    await h.ok(prevent_allow(0), nexus=I2)  # another nexus cannot lift it
    assert await h.sense(start_stop(1, 0)) == prevented
    await h.ok(prevent_allow(0))
    await h.ok(start_stop(1, 0))
    await h.ok(prevent_allow(1))
    assert await h.sense(start_stop(1, 1)) == prevented
    h.device.nexus_gone(h.unit.ua.nexuses[0])
    await h.ok(start_stop(1, 1), nexus=I2)
    assert await h.sense(prevent_allow(2), nexus=I2) == BAD_CDB


async def test_loej_on_fixed_disk_is_refused(h: Harness) -> None:
    assert await h.sense(start_stop(1, 0)) == BAD_CDB
    await h.ok(start_stop(0, 1))
    await h.ok(tur())


@pytest.mark.parametrize("cdb", [
    bytes((0x37, 0, 0x1D, 0, 0, 0, 0, 0, 32, 0)),
    bytes((0xB7, 0x18, 0, 0, 0, 7, 0, 0, 0, 32, 0, 0)),
])
async def test_read_defect_data_is_empty(h: Harness, cdb: bytes) -> None:
    data = await h.ok(cdb)
    assert data and not any(data[2:])
