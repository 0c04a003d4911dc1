"""The command table: one ``Command`` per operation code (and service action).

A logical unit type (disk, later CD/DVD) owns a ``CommandTable`` built from
lists of ``Command``. Each entry carries what the dispatcher needs before the
handler runs (SAM-5 5.14 ordering: unit attention, reservation conflict,
medium present) and what REPORT SUPPORTED OPERATION CODES reports:

* ``usage``: the CDB usage data (SPC-4 6.35.3, table 251): byte 0 is the
  opcode, then a mask of the bits the device server evaluates; its length is
  the CDB length;
* ``access``: how the command meets a persistent reservation (SPC-4 5.9.1,
  table 62; SBC-3 4.17, table 13): FREE never conflicts, READ conflicts only
  under the exclusive-access types, WRITE under every type;
* ``r6_free``: allowed while another I_T nexus holds a RESERVE(6)
  reservation (SPC-2 7.21.1: INQUIRY, REPORT LUNS, REQUEST SENSE, RELEASE);
* ``ua_exempt``: INQUIRY, REPORT LUNS and REQUEST SENSE do not report a
  pending unit attention (SAM-5 5.14);
* ``needs_medium``: NOT READY / MEDIUM NOT PRESENT on an empty removable unit;
* ``available``: an optional predicate on the unit (UNMAP only when thin).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from blockyard.scsi.task import Buffer, Nexus, ScsiCommand, ScsiResult


class Access(IntEnum):
    FREE = 0
    READ = 1
    WRITE = 2


@dataclass(slots=True)
class Request:
    """One command on its way through a logical unit."""

    cmd: ScsiCommand
    cdb: bytes  # padded to at least 16 bytes

    @property
    def nexus(self) -> Nexus:
        return self.cmd.nexus

    @property
    def data_out(self) -> memoryview:
        d = self.cmd.data_out
        return memoryview(d if d is not None else b"").cast("B")


Handler = Callable[[Any, Request], Awaitable[ScsiResult]]
DEFAULT_TIMEOUT = 30  # seconds, for the RCTD timeouts descriptor


@dataclass(frozen=True, slots=True)
class Command:
    opcode: int
    sa: int | None
    name: str
    handler: Handler
    usage: bytes
    access: Access = Access.WRITE
    r6_free: bool = False
    ua_exempt: bool = False
    needs_medium: bool = False
    available: Callable[[Any], bool] | None = None
    timeout: int = DEFAULT_TIMEOUT

    @property
    def cdb_length(self) -> int:
        return len(self.usage)


def usage(*mask: int) -> bytes:
    return bytes(mask)


class CommandTable:
    """Lookup by opcode (then service action, read from the CDB)."""

    def __init__(self, commands: Iterable[Command]) -> None:
        self._plain: dict[int, Command] = {}
        self._sa: dict[int, dict[int, Command]] = {}
        for c in commands:
            if c.sa is None:
                self._plain[c.opcode] = c
            else:
                self._sa.setdefault(c.opcode, {})[c.sa] = c

    def has_service_actions(self, opcode: int) -> bool:
        return opcode in self._sa

    def lookup(self, cdb: bytes) -> Command | None:
        cmd = self._plain.get(cdb[0])
        if cmd is not None:
            return cmd
        actions = self._sa.get(cdb[0])
        return actions.get(cdb[1] & 0x1F) if actions is not None else None

    def get(self, opcode: int, sa: int | None) -> Command | None:
        if sa is None:
            return self._plain.get(opcode)
        return self._sa.get(opcode, {}).get(sa)

    def __iter__(self) -> Iterator[Command]:
        yield from self._plain.values()
        for actions in self._sa.values():
            yield from actions.values()

    def for_unit(self, unit: object) -> CommandTable:
        """The subset whose ``available`` predicate accepts ``unit``."""
        return CommandTable(c for c in self if c.available is None or c.available(unit))


def service_action_of(cdb: bytes) -> int:
    return cdb[1] & 0x1F


def data_out(req: Request, needed: int) -> memoryview:
    """The first ``needed`` Data-Out bytes (fewer if fewer arrived)."""
    return req.data_out[:needed]


def good(data: Buffer = b"", data_out_used: int = 0) -> ScsiResult:
    return ScsiResult(data=data, data_out_used=data_out_used)
