"""``ScsiTargetDevice``: the SCSI target device behind one iSCSI target.

It owns the logical units (``luns``: LUN number -> ``LogicalUnit``) and is
the one object the transport talks to:

* ``await execute(cmd)`` for every SCSI command. ``cmd.lun`` is the LUN
  number already decoded from the 8-byte LUN field (``cdb.decode_lun``);
* ``await task_management(function, nexus, lun)`` for task management
  functions, answering an RFC 7143 11.6.1 response code;
* ``nexus_gone(nexus)`` when an I_T nexus ends (logout, connection loss,
  session reinstatement).

REPORT LUNS (SPC-4 6.33) is answered here for any LUN. A LUN with no
logical unit behind it answers INQUIRY with peripheral qualifier 011b /
type 1Fh, REQUEST SENSE with LOGICAL UNIT NOT SUPPORTED as sense data, and
everything else with CHECK CONDITION, ILLEGAL REQUEST, LOGICAL UNIT NOT
SUPPORTED (25h/00h) (SPC-4 6.6.2, 6.39). Adding or removing a LUN raises
REPORTED LUNS DATA HAS CHANGED (3Fh/0Eh) on the other units (SPC-4 5.14).
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from enum import IntEnum
from typing import Any

from blockyard.scsi import fastpath
from blockyard.scsi.cdb import check_control, encode_lun, pad_cdb, u16, u32
from blockyard.scsi.commands import Request, good
from blockyard.scsi.opcodes import Op
from blockyard.scsi.sense import (
    BUS_DEVICE_RESET,
    HARDWARE_ERROR,
    ILLEGAL_REQUEST,
    INTERNAL_TARGET_FAILURE,
    LU_NOT_SUPPORTED,
    POWER_ON_OCCURRED,
    REPORTED_LUNS_DATA_CHANGED,
    ScsiError,
    check_condition,
    fixed_sense,
    invalid_cdb,
)
from blockyard.scsi.task import Nexus, ScsiCommand, ScsiResult, TmfFunction
from blockyard.scsi.unit import LogicalUnit

log = logging.getLogger(__name__)

SELECT_ALL, SELECT_WELL_KNOWN, SELECT_ALL_ACCESSIBLE = 0, 1, 2
NO_LU_INQUIRY_LEN = 36


Started = ScsiResult | fastpath.ThreadedWrite | Coroutine[Any, Any, ScsiResult]


class TmfResponse(IntEnum):
    """Task management response codes (RFC 7143 11.6.1)."""

    COMPLETE = 0
    NO_SUCH_TASK = 1
    NO_SUCH_LUN = 2
    NOT_SUPPORTED = 5
    REJECTED = 255


class ScsiTargetDevice:
    def __init__(self, luns: dict[int, LogicalUnit] | None = None) -> None:
        self.luns: dict[int, LogicalUnit] = {}
        for lun, unit in (luns or {}).items():
            self.add_lun(lun, unit)

    # ---- configuration at run time ------------------------------------------------
    def add_lun(self, lun: int, unit: LogicalUnit) -> None:
        encode_lun(lun)  # range check
        if lun in self.luns:
            raise ValueError(f"LUN {lun} is already in use")
        unit.lun = lun
        unit.device = self
        self._luns_changed()
        self.luns[lun] = unit

    def remove_lun(self, lun: int) -> LogicalUnit:
        unit = self.luns.pop(lun)
        self._luns_changed()
        return unit

    def _luns_changed(self) -> None:
        for unit in self.luns.values():
            unit.notify(REPORTED_LUNS_DATA_CHANGED)

    # ---- commands --------------------------------------------------------------------
    def answer_now(self, cmd: ScsiCommand) -> ScsiResult | None:
        """The result of ``cmd`` if it can be answered at once without a thread or a wait
        (``fastpath.answer_now``), else None with nothing started: then ``start`` it."""
        unit = self.luns.get(cmd.lun)
        if unit is not None and unit.fast_rw:
            return fastpath.answer_now(unit, cmd)  # type: ignore[arg-type]
        return None

    def start(self, cmd: ScsiCommand) -> Started:
        """Begin ``cmd``: its result if it is answered at once (a READ or WRITE on the fast
        path served by the page cache, or read data going out by reference), a
        ``ThreadedWrite`` for the caller to run on a thread (a large write), else the
        coroutine that runs it, to be awaited (or stepped).  ``execute`` does all that."""
        unit = self.luns.get(cmd.lun)
        if unit is not None and unit.fast_rw:  # READ/WRITE(10/16), nothing special going on
            io = fastpath.plan(unit, cmd)  # type: ignore[arg-type]
            if io is not None:
                offset, length, writing, fua = io
                if writing:
                    now = fastpath.write_now(unit, cmd, offset, length, fua)  # type: ignore
                    if now is not None:
                        return now
                    return fastpath.write(unit, cmd, offset, length, fua)  # type: ignore
                done = fastpath.read_now(unit, cmd, offset, length)  # type: ignore[arg-type]
                if done is not None:
                    return done
                return fastpath.read(unit, cmd, offset, length)  # type: ignore[arg-type]
        return self._execute(cmd)

    async def execute(self, cmd: ScsiCommand) -> ScsiResult:
        started = self.start(cmd)
        if type(started) is ScsiResult:
            return started
        if type(started) is fastpath.ThreadedWrite:
            import asyncio  # only here: the SCSI core stays free of I/O at import time

            await asyncio.get_running_loop().run_in_executor(None, started.run)
            return started.finish()
        return await started  # type: ignore[misc]

    async def _execute(self, cmd: ScsiCommand) -> ScsiResult:
        """The general path: every check of SAM-5 / SPC-4 before the handler (unit.py)."""
        try:
            cdb = pad_cdb(bytes(cmd.cdb))
            if cdb[0] == Op.REPORT_LUNS:
                return self.report_luns(Request(cmd, cdb))
            unit = self.luns.get(cmd.lun)
            if unit is None:
                return self._no_such_lun(cdb)
            return await unit.execute(cmd, cdb)
        except ScsiError as err:
            return check_condition(err)
        except Exception:
            log.exception("command %s failed", bytes(cmd.cdb[:16]).hex())
            return check_condition(ScsiError(HARDWARE_ERROR, *INTERNAL_TARGET_FAILURE))

    def report_luns(self, req: Request) -> ScsiResult:
        """REPORT LUNS (SPC-4 6.33); clears REPORTED LUNS DATA HAS CHANGED (SPC-4 5.14)."""
        cdb = req.cdb
        check_control(cdb, 12)
        select = cdb[2]
        if select not in (SELECT_ALL, SELECT_WELL_KNOWN, SELECT_ALL_ACCESSIBLE):
            raise invalid_cdb(2)
        alloc = u32(cdb, 6)
        if alloc < 16:
            raise invalid_cdb(6)
        luns = [] if select == SELECT_WELL_KNOWN else sorted(self.luns)
        body = b"".join(encode_lun(n) for n in luns)
        for unit in self.luns.values():
            unit.ua.clear(req.nexus, REPORTED_LUNS_DATA_CHANGED)
        data = len(body).to_bytes(4, "big") + bytes(4) + body
        return good(data[:alloc])

    def _no_such_lun(self, cdb: bytes) -> ScsiResult:
        if cdb[0] == Op.INQUIRY and not cdb[1] & 0x01:
            data = bytearray(NO_LU_INQUIRY_LEN)
            data[0] = 0x7F  # PERIPHERAL QUALIFIER 011b, DEVICE TYPE 1Fh
            data[2], data[3], data[4] = 0x06, 0x02, NO_LU_INQUIRY_LEN - 5
            return good(bytes(data[:u16(cdb, 3)]))
        if cdb[0] == Op.REQUEST_SENSE:
            return good(fixed_sense(ILLEGAL_REQUEST, *LU_NOT_SUPPORTED)[:cdb[4]])
        return check_condition(ScsiError(ILLEGAL_REQUEST, *LU_NOT_SUPPORTED))

    # ---- task management and nexus loss ------------------------------------------------
    async def task_management(self, function: TmfFunction, nexus: Nexus,
                              lun: int) -> TmfResponse:
        """Task management (SAM-5 7): the resets act here; aborts belong to the transport.

        Commands run to completion inside ``execute`` (nothing queues in this
        layer), so ABORT TASK / ABORT TASK SET / CLEAR TASK SET have nothing
        to do at this level and complete; the transport drops its own tasks.
        """
        del nexus
        if function == TmfFunction.LOGICAL_UNIT_RESET:
            unit = self.luns.get(lun)
            if unit is None:
                return TmfResponse.NO_SUCH_LUN
            unit.reset(BUS_DEVICE_RESET)
            return TmfResponse.COMPLETE
        if function in (TmfFunction.TARGET_WARM_RESET, TmfFunction.TARGET_COLD_RESET):
            code = POWER_ON_OCCURRED if function == TmfFunction.TARGET_COLD_RESET \
                else BUS_DEVICE_RESET
            for unit in self.luns.values():
                unit.reset(code)
            return TmfResponse.COMPLETE
        if function in (TmfFunction.ABORT_TASK, TmfFunction.ABORT_TASK_SET,
                        TmfFunction.CLEAR_TASK_SET):
            return TmfResponse.COMPLETE
        return TmfResponse.NOT_SUPPORTED  # CLEAR ACA (no ACA), TASK REASSIGN (ERL 2)

    def nexus_gone(self, nexus: Nexus) -> None:
        for unit in self.luns.values():
            unit.nexus_gone(nexus)
