"""PERSISTENT RESERVE IN / OUT (SPC-4 6.13, 6.14): CDB and parameter codecs.

The state and its rules live in ``reservations.py``; this module decodes
the CDB and the 24-byte basic parameter list, and encodes the PR IN data.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from blockyard.scsi.cdb import check_control, u16, u32
from blockyard.scsi.commands import Request, good
from blockyard.scsi.reservations import Reservations
from blockyard.scsi.sense import invalid_cdb, invalid_param, param_list_length_error
from blockyard.scsi.task import Nexus, ScsiResult

if TYPE_CHECKING:
    from blockyard.scsi.unit import LogicalUnit

_HEADER = struct.Struct(">II")  # PRGENERATION, ADDITIONAL LENGTH
_PARAMS = struct.Struct(">QQ4sBB2s")  # key, sark, obsolete, flags, reserved, obsolete
_RESV = struct.Struct(">QIBB2s")  # key, obsolete, reserved, scope/type, obsolete
_FULL = struct.Struct(">Q4sBB4sHI")  # key, rsvd, flags, scope/type, rsvd, rel port, len
BASIC_PARAM_LEN = 24
RELATIVE_TARGET_PORT = 1

SPEC_I_PT = 0x08
ALL_TG_PT = 0x04
APTPL = 0x01


class PrIn:
    READ_KEYS = 0
    READ_RESERVATION = 1
    REPORT_CAPABILITIES = 2
    READ_FULL_STATUS = 3


class PrOut:
    REGISTER = 0
    RESERVE = 1
    RELEASE = 2
    CLEAR = 3
    PREEMPT = 4
    PREEMPT_AND_ABORT = 5
    REGISTER_AND_IGNORE = 6
    REGISTER_AND_MOVE = 7


# ---- PERSISTENT RESERVE IN -------------------------------------------------
async def persistent_reserve_in(unit: LogicalUnit, req: Request) -> ScsiResult:
    """PERSISTENT RESERVE IN (SPC-4 6.13)."""
    cdb = req.cdb
    check_control(cdb, 10)
    sa = cdb[1] & 0x1F
    builder = _PR_IN.get(sa)
    if builder is None:
        raise invalid_cdb(1, 4)
    data = builder(unit.res)
    return good(data[:u16(cdb, 7)])


def _read_keys(res: Reservations) -> bytes:
    """READ KEYS (6.13.2): the additional length is not cut by the allocation length."""
    keys = b"".join(k.to_bytes(8, "big") for k in res.keys.values())
    return _HEADER.pack(res.generation, len(keys)) + keys


def _read_reservation(res: Reservations) -> bytes:
    """READ RESERVATION (6.13.3)."""
    if res.rtype is None:
        return _HEADER.pack(res.generation, 0)
    body = _RESV.pack(res.reported_key(), 0, 0, int(res.rtype), b"\0\0")
    return _HEADER.pack(res.generation, len(body)) + body


def _report_capabilities(res: Reservations) -> bytes:
    """REPORT CAPABILITIES (6.13.4): no SIP_C, ATP_C, PTPL_C; TMV with all six types."""
    del res
    return bytes((0, 8, 0x00, 0x80, 0xEA, 0x01, 0, 0))


def transport_id(nexus: Nexus) -> bytes:
    """iSCSI TransportID, format 01b: name + ",i,0x" + ISID (SPC-4 7.6.4.6)."""
    name = nexus.initiator_port.encode() + b"\0"
    name += bytes(-len(name) % 4)
    if len(name) < 20:
        name += bytes(20 - len(name))
    return bytes((0x45, 0)) + len(name).to_bytes(2, "big") + name


def _read_full_status(res: Reservations) -> bytes:
    """READ FULL STATUS (6.13.5): one descriptor per registered I_T nexus."""
    out = bytearray()
    for nexus, key in res.keys.items():
        holder = res.is_holder(nexus)
        scope_type = int(res.rtype) if holder and res.rtype is not None else 0
        tid = transport_id(nexus)
        out += _FULL.pack(key, b"", 0x01 if holder else 0, scope_type, b"",
                          RELATIVE_TARGET_PORT, len(tid))
        out += tid
    return _HEADER.pack(res.generation, len(out)) + bytes(out)


_PR_IN = {
    PrIn.READ_KEYS: _read_keys,
    PrIn.READ_RESERVATION: _read_reservation,
    PrIn.REPORT_CAPABILITIES: _report_capabilities,
    PrIn.READ_FULL_STATUS: _read_full_status,
}


# ---- PERSISTENT RESERVE OUT ------------------------------------------------
async def persistent_reserve_out(unit: LogicalUnit, req: Request) -> ScsiResult:
    """PERSISTENT RESERVE OUT (SPC-4 6.14) with the basic parameter list (6.14.3)."""
    cdb = req.cdb
    check_control(cdb, 10)
    sa = cdb[1] & 0x1F
    if sa > PrOut.REGISTER_AND_IGNORE:
        raise invalid_cdb(1, 4)  # REGISTER AND MOVE is not supported
    plen = u32(cdb, 5)
    params = req.data_out[:plen]
    if plen != BASIC_PARAM_LEN or len(params) < BASIC_PARAM_LEN:
        raise param_list_length_error()
    rk, sark, _, flags, _, _ = _PARAMS.unpack_from(params)
    _check_param_flags(sa, flags)
    _apply(unit.res, req.nexus, sa, rk, sark, cdb[2] & 0x0F, cdb[2] >> 4)
    return good(data_out_used=plen)


def _check_param_flags(sa: int, flags: int) -> None:
    if flags & SPEC_I_PT:
        raise invalid_param(20, 3)
    if flags & ALL_TG_PT:
        raise invalid_param(20, 2)
    if flags & APTPL:  # PTPL_C = 0: no persistence through power loss
        raise invalid_param(20, 0)
    if flags & ~(SPEC_I_PT | ALL_TG_PT | APTPL) & 0xFF:
        raise invalid_param(20)
    del sa


def _apply(res: Reservations, nexus: Nexus, sa: int, rk: int, sark: int,
           rtype: int, scope: int) -> None:
    if sa == PrOut.REGISTER:
        res.register(nexus, rk, sark, ignore=False)
    elif sa == PrOut.REGISTER_AND_IGNORE:
        res.register(nexus, rk, sark, ignore=True)
    elif sa == PrOut.RESERVE:
        res.reserve(nexus, rk, rtype, scope)
    elif sa == PrOut.RELEASE:
        res.release(nexus, rk, rtype, scope)
    elif sa == PrOut.CLEAR:
        res.clear(nexus, rk)
    else:  # PREEMPT, PREEMPT AND ABORT: commands run to completion here, nothing to abort
        res.preempt(nexus, rk, sark, rtype, scope)
