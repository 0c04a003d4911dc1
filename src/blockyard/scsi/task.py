"""The interface between a SCSI transport (the iSCSI target) and the SCSI layer.

The transport gathers a command's whole Data-Out payload (immediate data,
unsolicited Data-Out and R2T-solicited Data-Out, up to the Expected Data
Transfer Length), then calls ``ScsiTargetDevice.execute(cmd)`` and turns the
``ScsiResult`` into Data-In PDUs and a SCSI Response:

* ``data`` is the Data-In payload the command produced (possibly longer than
  ``cmd.expected_in``: the transport truncates it and reports an overflow
  residual; shorter: an underflow residual);
* ``data_out_used`` is how many Data-Out bytes the command needed according to
  its CDB (the transport compares it with the Expected Data Transfer Length to
  report write residuals);
* ``sense`` is fixed-format sense data (response code 0x70) when ``status`` is
  CHECK CONDITION.

Identities: an I_T nexus is the pair (initiator port, target port).  For
iSCSI the initiator port name is ``<initiator IQN>,i,0x<ISID as 12 hex
digits>`` and the target port name ``<target IQN>,t,0x<TPGT as 4 hex digits>``
(RFC 7143 §4.2.7 / SAM-5).  Persistent reservations and unit attentions are
kept per nexus.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

Buffer = bytes | bytearray | memoryview


class Status(IntEnum):
    GOOD = 0x00
    CHECK_CONDITION = 0x02
    CONDITION_MET = 0x04
    BUSY = 0x08
    RESERVATION_CONFLICT = 0x18
    TASK_SET_FULL = 0x28
    ACA_ACTIVE = 0x30
    TASK_ABORTED = 0x40


class TaskAttr(IntEnum):
    UNTAGGED = 0
    SIMPLE = 1
    ORDERED = 2
    HEAD_OF_QUEUE = 3
    ACA = 4


class Nexus(NamedTuple):
    """An I_T nexus.  A tuple, so hashing and comparing it (per command, as a dict key
    of unit attentions and reservations) run in C."""

    initiator_port: str  # "<iqn>,i,0x<isid>"
    target_port: str  # "<iqn>,t,0x<tpgt>"

    @property
    def initiator_name(self) -> str:
        return self.initiator_port.split(",", 1)[0]


@dataclass(slots=True)
class ScsiCommand:
    cdb: bytes
    lun: int
    nexus: Nexus
    data_out: Buffer | None = None
    expected_in: int = 0
    task_attr: TaskAttr = TaskAttr.SIMPLE
    tag: int = 0
    # The transport can send read data by reference (``FileSpan``), e.g. with sendfile(2)
    by_reference: bool = False


class FileSpan:
    """``count`` bytes of the file ``fd`` from ``offset``: read data the transport sends
    straight from the file (sendfile) instead of bytes in memory.  Only produced for
    commands with ``by_reference`` set; slicing gives the span of a sub-range."""

    __slots__ = ("fd", "offset", "count")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.fd, self.offset, self.count = fd, offset, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, part: slice) -> FileSpan:
        start, stop, _ = part.indices(self.count)
        return FileSpan(self.fd, self.offset + start, max(0, stop - start))

    def __repr__(self) -> str:
        return f"FileSpan(fd={self.fd}, offset={self.offset}, count={self.count})"


@dataclass(slots=True)
class ScsiResult:
    status: int = Status.GOOD
    data: Buffer | FileSpan = b""  # FileSpan only for commands with by_reference
    sense: bytes = b""
    data_out_used: int = 0
    extra: dict[str, object] | None = None  # transport-specific details, rarely set


class TmfFunction(IntEnum):
    """Task management functions (RFC 7143 §11.5.1)."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LOGICAL_UNIT_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8
