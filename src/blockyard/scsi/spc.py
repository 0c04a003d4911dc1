"""SPC-4 commands every logical unit type answers.

INQUIRY, TEST UNIT READY, REQUEST SENSE, RESERVE(6)/RELEASE(6), PERSISTENT
RESERVE IN/OUT (codecs in ``persistent.py``), REPORT LUNS (answered by the
target device for any LUN) and REPORT SUPPORTED OPERATION CODES. ``SPC_COMMANDS``
is the part of every unit's command table they make up.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from blockyard.scsi.cdb import check_control, check_flags, check_zero, u16, u32
from blockyard.scsi.commands import Access, Command, CommandTable, Request, good, usage
from blockyard.scsi.opcodes import Op, SaMaintIn
from blockyard.scsi.persistent import persistent_reserve_in, persistent_reserve_out
from blockyard.scsi.sense import (
    MEDIUM_NOT_PRESENT,
    NO_ADDITIONAL_SENSE,
    NO_SENSE,
    NOT_READY,
    fixed_sense,
    invalid_cdb,
)
from blockyard.scsi.task import ScsiResult

if TYPE_CHECKING:
    from blockyard.scsi.unit import LogicalUnit

_DESCRIPTOR = struct.Struct(">BxHxBH")  # opcode, SA, flags, CDB length
_TIMEOUTS = struct.Struct(">HxBII")  # length 0x0A, command specific, nominal, recommended
CTDP = 0x02
SERVACTV = 0x01
SUPPORT_NONE = 0x01
SUPPORT_STANDARD = 0x03
RECOMMENDED_TIMEOUT = 30


async def inquiry(unit: LogicalUnit, req: Request) -> ScsiResult:
    """INQUIRY (SPC-4 6.6): standard data, or a VPD page when EVPD=1."""
    cdb = req.cdb
    check_flags(cdb, 0x01)
    check_control(cdb, 6)
    alloc = u16(cdb, 3)
    if not cdb[1] & 0x01:
        if cdb[2]:
            raise invalid_cdb(2)  # PAGE CODE must be zero without EVPD
        return good(unit.standard_inquiry()[:alloc])
    page = unit.vpd_page(cdb[2])
    if page is None:
        raise invalid_cdb(2)
    return good(page[:alloc])


async def test_unit_ready(unit: LogicalUnit, req: Request) -> ScsiResult:
    """TEST UNIT READY (SPC-4 6.47): medium presence is checked by the pipeline."""
    check_zero(req.cdb, 1, 2, 3, 4)
    check_control(req.cdb, 6)
    del unit
    return good()


async def request_sense(unit: LogicalUnit, req: Request) -> ScsiResult:
    """REQUEST SENSE (SPC-4 6.39): reports and clears a pending unit attention."""
    cdb = req.cdb
    check_flags(cdb, 0x00)  # DESC=1: descriptor format is not supported
    check_control(cdb, 6)
    pending = unit.ua.pop(req.nexus)
    if pending is not None:
        sense = pending.sense()
    elif not unit.medium_present:
        sense = fixed_sense(NOT_READY, *MEDIUM_NOT_PRESENT)
    else:
        sense = fixed_sense(NO_SENSE, *NO_ADDITIONAL_SENSE)
    return good(sense[:cdb[4]])


async def reserve6(unit: LogicalUnit, req: Request) -> ScsiResult:
    """RESERVE(6) (SPC-2 7.21): whole-unit reservation, no extents."""
    check_flags(req.cdb, 0x00)
    check_zero(req.cdb, 2, 3, 4)
    check_control(req.cdb, 6)
    unit.res.reserve6(req.nexus)
    return good()


async def release6(unit: LogicalUnit, req: Request) -> ScsiResult:
    """RELEASE(6) (SPC-2 7.17): a no-op unless this I_T nexus holds it."""
    check_flags(req.cdb, 0x00)
    check_zero(req.cdb, 2, 3, 4)
    check_control(req.cdb, 6)
    unit.res.release6(req.nexus)
    return good()


async def report_luns(unit: LogicalUnit, req: Request) -> ScsiResult:
    """REPORT LUNS (SPC-4 6.33); normally answered by the target device itself."""
    if unit.device is None:
        raise invalid_cdb(0)
    result: ScsiResult = unit.device.report_luns(req)
    return result


async def report_supported_opcodes(unit: LogicalUnit, req: Request) -> ScsiResult:
    """REPORT SUPPORTED OPERATION CODES (SPC-4 6.35), all or one command."""
    cdb = req.cdb
    check_control(cdb, 12)
    rctd = bool(cdb[2] & 0x80)
    options = cdb[2] & 0x07
    if cdb[2] & 0x78:
        raise invalid_cdb(2, 6)
    if options == 0:
        data = _all_commands(unit.commands, rctd)
    elif options <= 3:
        data = _one_command(unit.commands, options, cdb[3], u16(cdb, 4), rctd)
    else:
        raise invalid_cdb(2, 2)
    return good(data[:u32(cdb, 6)])


def _timeouts(cmd: Command) -> bytes:
    return _TIMEOUTS.pack(0x0A, 0, 0, cmd.timeout)


def _all_commands(table: CommandTable, rctd: bool) -> bytes:
    out = bytearray()
    for cmd in sorted(table, key=lambda c: (c.opcode, c.sa or 0)):
        flags = (CTDP if rctd else 0) | (SERVACTV if cmd.sa is not None else 0)
        out += _DESCRIPTOR.pack(cmd.opcode, cmd.sa or 0, flags, cmd.cdb_length)
        if rctd:
            out += _timeouts(cmd)
    return len(out).to_bytes(4, "big") + bytes(out)


def _one_command(table: CommandTable, options: int, opcode: int, sa: int,
                 rctd: bool) -> bytes:
    has_sa = table.has_service_actions(opcode)
    if options == 1 and has_sa:
        raise invalid_cdb(2, 2)  # this opcode needs a service action
    if options == 2 and not has_sa and table.get(opcode, None) is not None:
        raise invalid_cdb(2, 2)  # this opcode has no service actions
    cmd = table.get(opcode, sa if has_sa else None)
    if options == 3 and not has_sa and sa:
        cmd = None
    if cmd is None:
        return bytes((0, SUPPORT_NONE, 0, 0))
    head = bytes((0, (0x80 if rctd else 0) | SUPPORT_STANDARD)) + cmd.cdb_length.to_bytes(2, "big")
    return head + cmd.usage + (_timeouts(cmd) if rctd else b"")


_CTL = 0x04  # NACA is evaluated (and refused) in the control byte

SPC_COMMANDS = [
    Command(Op.TEST_UNIT_READY, None, "TEST UNIT READY", test_unit_ready,
            usage(0x00, 0, 0, 0, 0, _CTL), Access.FREE, needs_medium=True),
    Command(Op.REQUEST_SENSE, None, "REQUEST SENSE", request_sense,
            usage(0x03, 0, 0, 0, 0xFF, _CTL), Access.FREE, r6_free=True, ua_exempt=True),
    Command(Op.INQUIRY, None, "INQUIRY", inquiry,
            usage(0x12, 0x01, 0xFF, 0xFF, 0xFF, _CTL), Access.FREE, r6_free=True,
            ua_exempt=True),
    Command(Op.RESERVE_6, None, "RESERVE(6)", reserve6,
            usage(0x16, 0, 0, 0, 0, _CTL), Access.FREE),
    Command(Op.RELEASE_6, None, "RELEASE(6)", release6,
            usage(0x17, 0, 0, 0, 0, _CTL), Access.FREE, r6_free=True),
    Command(Op.PERSISTENT_RESERVE_IN, None, "PERSISTENT RESERVE IN", persistent_reserve_in,
            usage(0x5E, 0x1F, 0, 0, 0, 0, 0, 0xFF, 0xFF, _CTL), Access.FREE),
    Command(Op.PERSISTENT_RESERVE_OUT, None, "PERSISTENT RESERVE OUT", persistent_reserve_out,
            usage(0x5F, 0x1F, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, _CTL), Access.FREE),
    Command(Op.REPORT_LUNS, None, "REPORT LUNS", report_luns,
            usage(0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, _CTL), Access.FREE,
            r6_free=True, ua_exempt=True),
    Command(Op.MAINTENANCE_IN, SaMaintIn.REPORT_SUPPORTED_OPCODES,
            "REPORT SUPPORTED OPERATION CODES", report_supported_opcodes,
            usage(0xA3, 0x1F, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, _CTL),
            Access.FREE, r6_free=True),
]
