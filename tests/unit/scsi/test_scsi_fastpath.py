"""scsi/fastpath.py: READ/WRITE(10/16) without the general pipeline give exactly the
general pipeline's answers, and step aside whenever any of its checks has something
to say.  Every case runs on two identical devices, one with the fast path switched
off (``unit.fast_rw = False``), over a RAM disk (coroutine I/O) and over a raw file
(``sync_pread`` / ``sync_pwrite``, ``FileSpan``, ``ThreadedWrite``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from scsi_cdbs import I1, I2, cmd, read10, read16, rw10, rw16, tur, write10, write16

from blockyard.block.layer import Layer
from blockyard.block.ram import RamDisk
from blockyard.block.raw import RawFile
from blockyard.scsi import fastpath
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskOptions, DiskUnit
from blockyard.scsi.mode import ModeState
from blockyard.scsi.task import (
    FileSpan,
    Nexus,
    ScsiCommand,
    ScsiResult,
    Status,
    TmfFunction,
)

BS = 512
BLOCKS = 2048
PATTERN = bytes(range(256)) * (BLOCKS * BS // 256)


def ram(read_only: bool = False) -> Layer:
    disk = RamDisk(BLOCKS * BS, read_only=read_only)
    disk.data[:] = PATTERN
    return disk


def raw_factory(tmp: Path) -> Callable[..., Layer]:
    count = iter(range(1000))

    def make(read_only: bool = False) -> Layer:
        path = tmp / f"disk{next(count)}.img"
        path.write_bytes(PATTERN)
        return RawFile(path, read_only=read_only)
    return make


@pytest.fixture(params=["ram", "raw"])
def layer_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[bool], Layer]:
    return ram if request.param == "ram" else raw_factory(tmp_path)


async def pair(factory: Callable[[bool], Layer], read_only: bool = False,
               options: DiskOptions | None = None) -> list[ScsiTargetDevice]:
    """Two devices with the same content: the fast path on, and off."""
    devices = []
    for fast in (True, False):
        unit = DiskUnit(factory(read_only), options or DiskOptions(read_only=read_only))
        assert unit.fast_rw
        unit.fast_rw = fast
        dev = ScsiTargetDevice({0: unit})
        for nexus in (I1, I2):
            while (await dev.execute(cmd(tur(), None, nexus))).status != Status.GOOD:
                pass
        devices.append(dev)
    return devices


def same(a: ScsiResult, b: ScsiResult) -> None:
    assert (a.status, bytes(a.sense), bytes(a.data), a.data_out_used) == \
        (b.status, bytes(b.sense), bytes(b.data), b.data_out_used)


async def both(devices: list[ScsiTargetDevice], cdb: bytes, data: bytes | None = None,
               nexus: Nexus = I1) -> ScsiResult:
    fast, slow = [await d.execute(cmd(cdb, data, nexus)) for d in devices]
    same(fast, slow)
    return fast


async def contents(dev: ScsiTargetDevice) -> bytes:
    unit = dev.luns[0]
    assert isinstance(unit, DiskUnit)
    return bytes(await unit.layer.pread(0, BLOCKS * BS))


CASES = [
    read10(0, 8), read16(100, 1), read16(BLOCKS - 8, 8),
    read10(BLOCKS - 4, 8),  # past the end
    read16(BLOCKS, 0), read16(BLOCKS + 1, 0),  # zero blocks at / past the end
    read10(0, 8, flags=0x18), read16(0, 8, flags=0x02),  # DPO+FUA; FUA_NV
    read10(0, 8, flags=0x20), read16(0, 8, flags=0x01),  # RDPROTECT; reserved bit 0
    read16(0, 8)[:15] + b"\x04",  # NACA
    rw10(0x28, 0, 8, group=0x1F), read16(0, 0x10000),  # group number; above Block Limits
]


async def test_reads_match_the_general_path(layer_factory: Callable[[bool], Layer]) -> None:
    devices = await pair(layer_factory)
    fast = devices[0].luns[0]
    assert isinstance(fast, DiskUnit)
    assert fastpath.plan(fast, cmd(read16(0, 8), None, I1)) == (0, 8 * BS, False, False)
    for cdb in CASES:
        await both(devices, cdb)


WRITES = [
    (write10(0, 8), 8 * BS), (write16(300, 1), BS), (write16(BLOCKS - 8, 8), 8 * BS),
    (write10(BLOCKS - 4, 8), 8 * BS),  # past the end
    (write16(10, 8, flags=0x08), 8 * BS),  # FUA
    (write16(10, 8, flags=0x40), 8 * BS),  # WRPROTECT
    (write16(10, 8), 4 * BS), (write16(10, 8), 8 * BS + 100),  # fewer / more bytes
    (write16(10, 8), 8 * BS - 1),  # a partial block
    (write16(20, 0), 0), (write10(20, 256), 256 * BS),  # nothing; 128 KiB (threaded)
    (write16(0, 8)[:15] + b"\x04", 8 * BS),  # NACA
]


async def test_writes_match_the_general_path(layer_factory: Callable[[bool], Layer]) -> None:
    devices = await pair(layer_factory)
    for i, (cdb, n) in enumerate(WRITES):
        await both(devices, cdb, bytes([i + 1]) * n)
        assert await contents(devices[0]) == await contents(devices[1])


async def test_write_protection_and_software_write_protect(
        layer_factory: Callable[[bool], Layer]) -> None:
    devices = await pair(layer_factory, read_only=True)
    await both(devices, write16(0, 8), bytes(8 * BS))
    devices = await pair(layer_factory)
    for dev in devices:
        unit = dev.luns[0]
        assert isinstance(unit, DiskUnit)
        unit.set_mode(ModeState(wce=True, swp=True))
    await both(devices, write16(0, 8), bytes(8 * BS))
    await both(devices, read16(0, 8))


async def test_unit_attention_first_contact_and_reset_take_the_general_path(
        layer_factory: Callable[[bool], Layer]) -> None:
    devices = await pair(layer_factory)
    stranger = Nexus("iqn.2024-01.test:init9,i,0x400000000009", I1.target_port)
    first = await both(devices, read16(0, 8), nexus=stranger)  # POWER ON first
    assert first.status == Status.CHECK_CONDITION
    for dev in devices:
        await dev.task_management(TmfFunction.LOGICAL_UNIT_RESET, I1, 0)  # UA for all
    assert (await both(devices, write16(0, 1), bytes(BS))).status == Status.CHECK_CONDITION
    assert (await both(devices, write16(0, 1), bytes(BS))).status == Status.GOOD


async def test_reservations_and_a_held_gate_take_the_general_path(
        layer_factory: Callable[[bool], Layer]) -> None:
    devices = await pair(layer_factory)
    for dev in devices:
        assert (await dev.execute(cmd(bytes([0x16, 0, 0, 0, 0, 0]), None, I2))).status == 0
    await both(devices, read16(0, 8), nexus=I1)  # RESERVE(6) by I2: conflict for I1
    await both(devices, write16(0, 8), bytes(8 * BS), nexus=I2)
    fast = devices[0].luns[0]
    assert isinstance(fast, DiskUnit)
    assert fastpath.plan(fast, cmd(read16(0, 8), None, I2)) is None
    for dev in devices:
        await dev.execute(cmd(bytes([0x17, 0, 0, 0, 0, 0]), None, I2))  # RELEASE(6)
    assert fastpath.plan(fast, cmd(read16(0, 8), None, I2)) is not None
    fast.gate._exclusive = True  # a COMPARE AND WRITE holds it
    assert fastpath.plan(fast, cmd(write16(0, 1), bytes(BS), I2)) is None
    fast.gate._exclusive = False


async def test_capacity_change_and_ejected_medium_take_the_general_path(
        tmp_path: Path) -> None:
    devices = await pair(raw_factory(tmp_path))
    for dev in devices:
        unit = dev.luns[0]
        assert isinstance(unit, DiskUnit)
        unit.layer.size -= 8 * BS  # the layer shrank under us
    assert (await both(devices, read16(0, 8))).status == Status.CHECK_CONDITION  # 2Ah/09h
    await both(devices, read16(BLOCKS - 8, 8))
    for dev in devices:
        dev.luns[0].medium_present = False
    await both(devices, read16(0, 8))


async def test_short_cdbs_and_other_opcodes_are_not_taken(tmp_path: Path) -> None:
    unit = DiskUnit(raw_factory(tmp_path)())
    dev = ScsiTargetDevice({0: unit})
    await dev.execute(cmd(tur(), None, I1))
    for cdb in (read16(0, 8)[:10], read10(0, 8)[:9], rw10(0x2F, 0, 8), rw16(0x8F, 0, 8)):
        assert fastpath.plan(unit, ScsiCommand(cdb, 0, I1)) is None


async def test_immediate_answers_and_what_is_left_to_the_caller(tmp_path: Path) -> None:
    unit = DiskUnit(raw_factory(tmp_path)())
    dev = ScsiTargetDevice({0: unit})
    await dev.execute(cmd(tur(), None, I1))
    got = dev.answer_now(ScsiCommand(read16(8, 8), 0, I1, expected_in=8 * BS))
    assert got is not None and bytes(got.data) == PATTERN[8 * BS:16 * BS]
    span = dev.answer_now(ScsiCommand(read16(0, 2048), 0, I1, expected_in=BLOCKS * BS,
                                      by_reference=True))
    assert span is not None and isinstance(span.data, FileSpan)
    assert (span.data.offset, span.data.count) == (0, BLOCKS * BS)
    sub = span.data[4096:8192]
    assert (sub.fd, sub.offset, sub.count) == (span.data.fd, 4096, 4096)
    small = ScsiCommand(write16(0, 8), 0, I1, data_out=b"\x07" * 8 * BS)
    assert dev.answer_now(small) is not None
    assert bytes(await unit.layer.pread(0, 8 * BS)) == b"\x07" * 8 * BS
    for i, big in enumerate((ScsiCommand(write16(0, 256), 0, I1, data_out=bytes(256 * BS)),
                             ScsiCommand(write16(0, 8, flags=0x08), 0, I1,
                                         data_out=b"\x09" * 8 * BS))):
        assert dev.answer_now(big) is None  # nothing started: no gate held, nothing written
        assert unit.gate._shared == 0
        assert bytes(await unit.layer.pread(0, 8 * BS)) == (b"\x07" if i == 0 else bytes(1)) \
            * 8 * BS
        threaded = dev.start(big)
        assert isinstance(threaded, fastpath.ThreadedWrite) and unit.gate._shared == 1
        threaded.run()
        assert threaded.finish().status == Status.GOOD and unit.gate._shared == 0
    assert bytes(await unit.layer.pread(0, 8 * BS)) == b"\x09" * 8 * BS


async def test_io_errors_become_the_same_sense(tmp_path: Path) -> None:
    devices = await pair(raw_factory(tmp_path))
    for dev in devices:
        unit = dev.luns[0]
        assert isinstance(unit, DiskUnit) and isinstance(unit.layer, RawFile)
        os.close(unit.layer.fd)
        unit.layer.fd = os.open("/dev/null", os.O_RDONLY)  # EBADF on write, short reads
        unit.layer.sync_pread = unit.layer._read_sync
        unit.layer.sync_pwrite = unit.layer._write_sync
    await both(devices, write16(0, 8), bytes(8 * BS))
    await both(devices, write16(0, 256), bytes(256 * BS))
