"""A tiny stand-in for the SCSI layer (tests only): a RAM disk with 512-byte blocks.

It speaks just enough SPC/SBC for the iSCSI tests: TEST UNIT READY, INQUIRY,
REPORT LUNS, READ CAPACITY(10), READ(10), WRITE(10), and reports
``data_out_used`` from the CDB the way the real layer's interface says.
Unknown opcodes get CHECK CONDITION / ILLEGAL REQUEST / INVALID COMMAND
OPERATION CODE.  Coroutines never suspend, so sans-IO tests run them with
``run_sync``.
"""

from __future__ import annotations

import struct
from collections.abc import Coroutine
from typing import Any

from blockyard.scsi.task import Nexus, ScsiCommand, ScsiResult, Status

BLOCK = 512


def sense(key: int, asc: int, ascq: int = 0) -> bytes:
    return bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


class StandinDevice:
    def __init__(self, blocks: int = 2048, luns: tuple[int, ...] = (0,)) -> None:
        self.disk = bytearray(blocks * BLOCK)
        self.blocks = blocks
        self.luns = {lun: object() for lun in luns}
        self.calls: list[ScsiCommand] = []
        self.tmfs: list[tuple[int, Nexus, int]] = []
        self.gone: list[Nexus] = []
        self.hold: dict[int, Any] = {}  # opcode -> awaitable to park commands on (transport tests)

    async def execute(self, cmd: ScsiCommand) -> ScsiResult:
        self.calls.append(cmd)
        gate = self.hold.get(cmd.cdb[0])
        if gate is not None:
            await gate
        handler = _OPS.get(cmd.cdb[0])
        if handler is None:
            return ScsiResult(Status.CHECK_CONDITION, sense=sense(5, 0x20))
        return handler(self, cmd)

    async def task_management(self, function: int, nexus: Nexus, lun: int) -> None:
        self.tmfs.append((function, nexus, lun))

    def nexus_gone(self, nexus: Nexus) -> None:
        self.gone.append(nexus)

    def _tur(self, cmd: ScsiCommand) -> ScsiResult:
        return ScsiResult()

    def _inquiry(self, cmd: ScsiCommand) -> ScsiResult:
        data = bytes([0, 0, 6, 2, 31, 0, 0, 0]) + b"BLOCKYRD" + b"STANDIN DISK    " + b"0001"
        alloc = struct.unpack_from(">H", cmd.cdb, 3)[0]
        return ScsiResult(data=data[:alloc])

    def _report_luns(self, cmd: ScsiCommand) -> ScsiResult:
        body = b"".join(struct.pack(">HHI", lun, 0, 0) for lun in sorted(self.luns))
        alloc = struct.unpack_from(">I", cmd.cdb, 6)[0]
        return ScsiResult(data=(struct.pack(">II", len(body), 0) + body)[:alloc])

    def _capacity(self, cmd: ScsiCommand) -> ScsiResult:
        return ScsiResult(data=struct.pack(">II", self.blocks - 1, BLOCK))

    def _read10(self, cmd: ScsiCommand) -> ScsiResult:
        lba, count = struct.unpack_from(">IxH", cmd.cdb, 2)
        if lba + count > self.blocks:
            return ScsiResult(Status.CHECK_CONDITION, sense=sense(5, 0x21))
        return ScsiResult(data=memoryview(self.disk)[lba * BLOCK:(lba + count) * BLOCK])

    def _write10(self, cmd: ScsiCommand) -> ScsiResult:
        lba, count = struct.unpack_from(">IxH", cmd.cdb, 2)
        need = count * BLOCK
        if lba + count > self.blocks:
            return ScsiResult(Status.CHECK_CONDITION, sense=sense(5, 0x21), data_out_used=need)
        data = bytes(cmd.data_out or b"")[:need]
        self.disk[lba * BLOCK:lba * BLOCK + len(data)] = data
        return ScsiResult(data_out_used=need)


_OPS = {
    0x00: StandinDevice._tur,
    0x12: StandinDevice._inquiry,
    0xA0: StandinDevice._report_luns,
    0x25: StandinDevice._capacity,
    0x28: StandinDevice._read10,
    0x2A: StandinDevice._write10,
}


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the stand-in suspended")


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)
