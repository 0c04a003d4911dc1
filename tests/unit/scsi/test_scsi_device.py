"""The target device: REPORT LUNS, missing LUNs, LUN changes, unit attentions, TMF."""

from __future__ import annotations

import struct

import pytest
from scsi_cdbs import (
    I1,
    I2,
    I3,
    inquiry,
    read10,
    read_capacity10,
    report_luns,
    request_sense,
    tur,
)
from scsi_harness import BS, Harness, make

from blockyard.block.ram import RamDisk
from blockyard.scsi.device import ScsiTargetDevice, TmfResponse
from blockyard.scsi.disk import DiskUnit
from blockyard.scsi.sense import (
    BUS_DEVICE_RESET,
    CAPACITY_DATA_CHANGED,
    ILLEGAL_REQUEST,
    INVALID_FIELD_IN_CDB,
    INVALID_OPCODE,
    LU_NOT_SUPPORTED,
    NO_SENSE,
    POWER_ON_OCCURRED,
    POWER_ON_RESET,
    REPORTED_LUNS_DATA_CHANGED,
    UNIT_ATTENTION,
    parse_fixed_sense,
)
from blockyard.scsi.task import Status, TmfFunction

BAD_CDB = (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)


def luns_of(data: bytes) -> list[int]:
    n = struct.unpack_from(">I", data)[0] // 8
    return [struct.unpack_from(">H", data, 8 + 8 * i)[0] & 0x3FFF for i in range(n)]


async def test_report_luns(h: Harness) -> None:
    h.device.add_lun(300, DiskUnit(RamDisk(1 << 20)))
    data = await h.ok(report_luns())
    assert luns_of(data) == [0, 300] and data[16] == 0x41  # flat addressing for 300
    assert await h.ok(report_luns(select=1)) == bytes(8)
    assert luns_of(await h.ok(report_luns(select=2))) == [0, 300]
    assert await h.sense(report_luns(select=3)) == BAD_CDB
    assert await h.sense(report_luns(alloc=15)) == BAD_CDB
    assert await h.ok(report_luns(alloc=16)) == data[:16]
    assert luns_of(await h.ok(report_luns(), lun=7)) == [0, 300]  # to a missing LUN too


async def test_missing_lun(h: Harness) -> None:
    data = await h.ok(inquiry(), lun=5)
    assert data[0] == 0x7F and len(data) == data[4] + 5
    sense = await h.ok(request_sense(), lun=5)
    assert parse_fixed_sense(sense) == (ILLEGAL_REQUEST, *LU_NOT_SUPPORTED)
    for cdb in (tur(), read10(0, 1), inquiry(1, 0)):
        assert await h.sense(cdb, lun=5) == (ILLEGAL_REQUEST, *LU_NOT_SUPPORTED)


async def test_unknown_opcode_and_service_action(h: Harness) -> None:
    assert await h.sense(bytes((0xC5,)) + bytes(15)) == (ILLEGAL_REQUEST, *INVALID_OPCODE)
    result = await h.run(bytes((0x9E, 0x11)) + bytes(14))
    assert parse_fixed_sense(result.sense) == BAD_CDB
    assert result.sense[15] & 0x80 and result.sense[16:18] == b"\x00\x01"  # field pointer 1
    assert await h.sense(tur()[:5] + b"\x04") == BAD_CDB  # NACA


async def test_first_command_reports_power_on() -> None:
    h = make()
    await h.ok(inquiry())  # INQUIRY does not report it
    await h.ok(report_luns())
    assert await h.sense(read10(0, 1)) == (UNIT_ATTENTION, *POWER_ON_RESET)
    await h.ok(read10(0, 1))
    assert await h.sense(tur(), nexus=I2) == (UNIT_ATTENTION, *POWER_ON_RESET)


async def test_request_sense_reports_and_clears(h: Harness) -> None:
    sense = await h.ok(request_sense(), nexus=I3)
    assert parse_fixed_sense(sense) == (UNIT_ATTENTION, *POWER_ON_RESET)
    assert parse_fixed_sense(await h.ok(request_sense(), nexus=I3))[0] == NO_SENSE
    await h.ok(tur(), nexus=I3)
    assert len(await h.ok(request_sense(alloc=8))) == 8
    assert await h.sense(request_sense(desc=1)) == BAD_CDB


async def test_capacity_change_is_reported(h: Harness) -> None:
    h.ram.size = 4096 * BS
    h.ram.data.extend(bytes(2048 * BS))
    h.ram.allocated.extend(bytes(2048 * BS // 4096))
    assert await h.sense(read_capacity10()) == (UNIT_ATTENTION, *CAPACITY_DATA_CHANGED)
    assert struct.unpack(">II", await h.ok(read_capacity10()))[0] == 4095
    assert await h.sense(tur(), nexus=I2) == (UNIT_ATTENTION, *CAPACITY_DATA_CHANGED)


async def test_lun_changes_are_reported_and_cleared_by_report_luns(h: Harness) -> None:
    h.device.add_lun(1, DiskUnit(RamDisk(1 << 20)))
    assert await h.sense(tur(), nexus=I2) == (UNIT_ATTENTION, *REPORTED_LUNS_DATA_CHANGED)
    await h.ok(report_luns())
    await h.ok(tur())  # REPORT LUNS cleared it for I1
    h.device.remove_lun(1)
    assert await h.sense(tur()) == (UNIT_ATTENTION, *REPORTED_LUNS_DATA_CHANGED)
    with pytest.raises(ValueError):
        h.device.add_lun(0, DiskUnit(RamDisk(1 << 20)))


async def test_lun_reset_reaches_every_nexus(h: Harness) -> None:
    assert await h.device.task_management(TmfFunction.LOGICAL_UNIT_RESET, I1, 0) == 0
    for nexus in (I1, I2):
        assert await h.sense(tur(), nexus=nexus) == (UNIT_ATTENTION, *BUS_DEVICE_RESET)
        await h.ok(tur(), nexus=nexus)
    assert await h.device.task_management(TmfFunction.LOGICAL_UNIT_RESET, I1, 9) == \
        TmfResponse.NO_SUCH_LUN


async def test_target_resets_and_other_functions(h: Harness) -> None:
    tm = h.device.task_management
    assert await tm(TmfFunction.TARGET_COLD_RESET, I1, 0) == TmfResponse.COMPLETE
    assert await h.sense(tur()) == (UNIT_ATTENTION, *POWER_ON_OCCURRED)
    assert await tm(TmfFunction.TARGET_WARM_RESET, I1, 0) == TmfResponse.COMPLETE
    assert await h.sense(tur(), nexus=I2) == (UNIT_ATTENTION, *BUS_DEVICE_RESET)
    assert await tm(TmfFunction.ABORT_TASK, I1, 0) == TmfResponse.COMPLETE
    assert await tm(TmfFunction.CLEAR_ACA, I1, 0) == TmfResponse.NOT_SUPPORTED


async def test_nexus_loss_starts_over(h: Harness) -> None:
    h.device.nexus_gone(I1)
    assert await h.sense(tur()) == (UNIT_ATTENTION, *POWER_ON_RESET)


async def test_short_cdb_is_padded(h: Harness) -> None:
    assert (await h.run(b"\x00")).status == Status.GOOD


async def test_device_construction() -> None:
    dev = ScsiTargetDevice({3: DiskUnit(RamDisk(1 << 20))})
    assert dev.luns[3].lun == 3 and dev.luns[3].device is dev
    with pytest.raises(ValueError):
        dev.add_lun(1 << 14, DiskUnit(RamDisk(1 << 20)))
