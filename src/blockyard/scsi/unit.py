"""``LogicalUnit``: the per-LU command pipeline shared by every device type.

``execute`` runs one command through the checks SAM-5 5.14 and SPC-4 5.9
put before the command itself, in this order:

1. a pending unit attention is reported (except to INQUIRY, REPORT LUNS,
   REQUEST SENSE);
2. an unknown operation code is INVALID COMMAND OPERATION CODE (20h/00h),
   an unknown service action INVALID FIELD IN CDB pointing at byte 1;
3. a reservation held by another I_T nexus gives RESERVATION CONFLICT;
4. a removable unit without medium gives NOT READY / MEDIUM NOT PRESENT;
5. the handler runs: it checks its CDB fields, the LBA range, write
   protection, then does the I/O.

Errors travel as exceptions (``ScsiError``, ``ReservationConflict``,
``BlockError`` from the layer) and become a ``ScsiResult`` here; anything
else is a bug and answers HARDWARE ERROR / INTERNAL TARGET FAILURE rather
than killing the session.
"""

from __future__ import annotations

import errno
import logging
from typing import Any, ClassVar

from blockyard.errors import BlockError
from blockyard.scsi.commands import Access, Command, CommandTable, Request
from blockyard.scsi.reservations import Reservations
from blockyard.scsi.sense import (
    BUS_DEVICE_RESET,
    DATA_PROTECT,
    HARDWARE_ERROR,
    ILLEGAL_REQUEST,
    INTERNAL_TARGET_FAILURE,
    INVALID_OPCODE,
    MEDIUM_ERROR,
    MEDIUM_NOT_PRESENT,
    NOT_READY,
    SPACE_ALLOC_FAILED_WRITE_PROTECT,
    UNRECOVERED_READ_ERROR,
    WRITE_ERROR,
    WRITE_PROTECTED,
    ReservationConflict,
    ScsiError,
    check_condition,
    conflict_result,
    invalid_cdb,
)
from blockyard.scsi.task import Nexus, ScsiCommand, ScsiResult
from blockyard.scsi.ua import Asc, UnitAttentions

log = logging.getLogger(__name__)


def block_error(err: BlockError, writing: bool) -> ScsiError:
    """Map a layer's errno to sense data (SBC-3 4.18 / SPC-4 annex D)."""
    if err.errno == errno.ENOSPC:
        return ScsiError(DATA_PROTECT, *SPACE_ALLOC_FAILED_WRITE_PROTECT)
    if err.errno in (errno.EPERM, errno.EROFS, errno.EACCES):
        return ScsiError(DATA_PROTECT, *WRITE_PROTECTED)
    if err.errno == errno.ENOMEDIUM:
        return ScsiError(NOT_READY, *MEDIUM_NOT_PRESENT)
    if err.errno == errno.EIO:
        return ScsiError(MEDIUM_ERROR, *(WRITE_ERROR if writing else UNRECOVERED_READ_ERROR))
    return ScsiError(HARDWARE_ERROR, *INTERNAL_TARGET_FAILURE)


class LogicalUnit:
    """Base of every LU type; subclasses provide ``COMMANDS`` and identity."""

    COMMANDS: ClassVar[CommandTable] = CommandTable(())
    peripheral_type: int = 0x1F
    removable: bool = False
    fast_rw: bool = False  # READ/WRITE(10/16) may take scsi/fastpath.py (a plain disk)

    def __init__(self) -> None:
        self.lun = -1  # set by ScsiTargetDevice.add_lun
        self.device: Any = None  # the ScsiTargetDevice, which answers REPORT LUNS
        self.ua = UnitAttentions()
        self.res = Reservations(self.ua)
        self.prevent: set[Nexus] = set()
        self.medium_present = True
        self.commands = self.COMMANDS.for_unit(self)

    # ---- the pipeline ------------------------------------------------------
    async def execute(self, cmd: ScsiCommand, cdb: bytes) -> ScsiResult:
        command: Command | None = None
        try:
            self.ua.first_contact(cmd.nexus)
            self.poll_changes()
            command = self.commands.lookup(cdb)
            return await self._run(command, Request(cmd, cdb))
        except ScsiError as err:
            return check_condition(err)
        except ReservationConflict:
            return conflict_result()
        except BlockError as err:
            writing = command is not None and command.access == Access.WRITE
            return check_condition(block_error(err, writing))
        except Exception:  # a bug: answer, log, keep the session
            log.exception("LUN %d: command %s failed", self.lun, cdb[:16].hex())
            return check_condition(ScsiError(HARDWARE_ERROR, *INTERNAL_TARGET_FAILURE))

    async def _run(self, command: Command | None, req: Request) -> ScsiResult:
        if command is None or not command.ua_exempt:
            pending = self.ua.pop(req.nexus)
            if pending is not None:
                raise pending
        if command is None:
            if self.commands.has_service_actions(req.cdb[0]):
                raise invalid_cdb(1, 4)
            raise ScsiError(ILLEGAL_REQUEST, *INVALID_OPCODE)
        if self.res.active and self.res.conflicts(req.nexus, command):
            raise ReservationConflict()
        if command.needs_medium and not self.medium_present:
            raise ScsiError(NOT_READY, *MEDIUM_NOT_PRESENT)
        return await command.handler(self, req)

    def poll_changes(self) -> None:
        """Hook run before each command (a disk checks its capacity here)."""

    # ---- events from the target and the transport -----------------------------
    def reset(self, code: Asc = BUS_DEVICE_RESET) -> None:
        """LOGICAL UNIT RESET or a target reset (SAM-5 6.3): UA on every I_T nexus.

        RESERVE(6) reservations and PREVENT MEDIUM REMOVAL end; persistent
        reservations stay (SPC-4 5.9.13).
        """
        self.res.drop_reserve6()
        self.prevent.clear()
        self.ua.establish(code, self.ua.nexuses)

    def nexus_gone(self, nexus: Nexus) -> None:
        """I_T nexus loss (SPC-4 5.9.13): its RESERVE(6) and prevent flag end."""
        self.res.drop_reserve6(nexus)
        self.prevent.discard(nexus)
        self.ua.forget(nexus)

    def notify(self, code: Asc, *, except_: Nexus | None = None) -> None:
        self.ua.establish_all(code, except_=except_)

    # ---- identity, overridden by device types ------------------------------------
    def standard_inquiry(self) -> bytes:
        raise NotImplementedError

    def vpd_page(self, page: int) -> bytes | None:
        """The VPD page's data, or None if unsupported."""
        del page
        return None
