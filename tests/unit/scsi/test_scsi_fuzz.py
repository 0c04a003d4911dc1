"""Random CDBs and Data-Out never escape ``execute`` as anything but a proper status."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scsi_cdbs import I1, I2, cmd

from blockyard.block.ram import RamDisk
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskOptions, DiskUnit
from blockyard.scsi.sense import INTERNAL_TARGET_FAILURE, parse_fixed_sense
from blockyard.scsi.task import ScsiCommand, Status

KNOWN = sorted({c.opcode for c in DiskUnit.COMMANDS} | {0xA0})
opcodes = st.one_of(st.sampled_from(KNOWN), st.integers(0, 255))
cdbs = st.builds(lambda op, rest: bytes((op,)) + rest, opcodes,
                 st.binary(min_size=0, max_size=31))
data_outs = st.one_of(st.none(), st.binary(max_size=2048),
                      st.integers(0, 4).map(lambda n: bytes(n * 512)))
commands = st.builds(lambda c, d, n, lun: cmd(c, d, n, lun), cdbs, data_outs,
                     st.sampled_from([I1, I2]), st.sampled_from([0, 0, 0, 1]))

ALLOWED = {Status.GOOD, Status.CHECK_CONDITION, Status.RESERVATION_CONFLICT}


def fresh_device() -> ScsiTargetDevice:
    return ScsiTargetDevice({
        0: DiskUnit(RamDisk(256 << 10)),
        2: DiskUnit(RamDisk(64 << 10), DiskOptions(removable=True, read_only=True)),
    })


async def check(device: ScsiTargetDevice, command: ScsiCommand) -> None:
    result = await device.execute(command)
    assert result.status in ALLOWED
    assert result.data_out_used >= 0
    if result.status == Status.CHECK_CONDITION:
        assert len(result.sense) == 18
        key, asc, ascq = parse_fixed_sense(result.sense)
        assert 1 <= key <= 0xE
        assert (asc, ascq) != INTERNAL_TARGET_FAILURE, command.cdb.hex()  # a bug
    else:
        assert result.sense == b""
        memoryview(result.data)


def run_sequence(seq: list[ScsiCommand]) -> None:
    async def go() -> None:
        device = fresh_device()
        for command in seq:
            await check(device, command)
    asyncio.run(go())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(commands, min_size=1, max_size=12))
def test_random_command_sequences(seq: list[ScsiCommand]) -> None:
    run_sequence(seq)


@pytest.mark.soak
@settings(max_examples=20000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(commands, min_size=1, max_size=40))
def test_random_command_sequences_soak(seq: list[ScsiCommand]) -> None:
    run_sequence(seq)
