"""Test harness: a target device with one thin 1 MiB disk on a RAM disk, at LUN 0."""

from __future__ import annotations

from scsi_cdbs import I1, cmd, sense_of, tur

from blockyard.block.ram import RamDisk
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskOptions, DiskUnit
from blockyard.scsi.task import Nexus, ScsiResult, Status

BLOCKS = 2048
BS = 512


class Harness:
    """Sends commands to a device and checks statuses."""

    def __init__(self, device: ScsiTargetDevice, ram: RamDisk) -> None:
        self.device = device
        self.ram = ram

    @property
    def unit(self) -> DiskUnit:
        unit = self.device.luns[0]
        assert isinstance(unit, DiskUnit)
        return unit

    async def run(self, cdb: bytes, data_out: bytes | None = None, nexus: Nexus = I1,
                  lun: int = 0) -> ScsiResult:
        return await self.device.execute(cmd(cdb, data_out, nexus, lun))

    async def ok(self, cdb: bytes, data_out: bytes | None = None, nexus: Nexus = I1,
                 lun: int = 0) -> bytes:
        result = await self.run(cdb, data_out, nexus, lun)
        assert result.status == Status.GOOD, (result, result.sense.hex())
        return bytes(result.data)

    async def sense(self, cdb: bytes, data_out: bytes | None = None, nexus: Nexus = I1,
                    lun: int = 0) -> tuple[int, int, int]:
        return sense_of(await self.run(cdb, data_out, nexus, lun))

    async def status(self, cdb: bytes, data_out: bytes | None = None, nexus: Nexus = I1,
                     lun: int = 0) -> int:
        return (await self.run(cdb, data_out, nexus, lun)).status

    async def clear_ua(self, nexus: Nexus = I1, lun: int = 0) -> None:
        for _ in range(10):
            if (await self.run(tur(), nexus=nexus, lun=lun)).status == Status.GOOD:
                return
        raise AssertionError("unit attentions do not clear")


def make(options: DiskOptions | None = None, blocks: int = BLOCKS,
         read_only: bool = False) -> Harness:
    ram = RamDisk(blocks * BS, read_only=read_only)
    device = ScsiTargetDevice({0: DiskUnit(ram, options)})
    return Harness(device, ram)
