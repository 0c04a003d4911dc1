"""Mode parameters of a disk: MODE SENSE(6/10) and MODE SELECT(6/10).

Pages (none saveable, so PS=0 and page control 11b answers SAVING PARAMETERS
NOT SUPPORTED, SPC-4 6.11 / 7.5):

* 08h Caching (SBC-3 6.4.5): WCE changeable (the write cache of the host
  cache policy), RCD=0;
* 0Ah Control (SPC-4 7.5.8): SWP changeable (software write protect:
  writes then fail DATA PROTECT / WRITE PROTECTED), D_SENSE=0 (fixed sense
  only), QUEUE ALGORITHM MODIFIER=1 (unrestricted), BUSY TIMEOUT unlimited;
* 1Ch Informational Exceptions Control (SPC-4 7.5.11): DEXCPT=1, nothing
  to report.

MODE SELECT takes the same pages back; a byte outside the changeable mask
that differs from the current value is INVALID FIELD IN PARAMETER LIST.
A change raises MODE PARAMETERS CHANGED (2Ah/01h) on the other I_T nexuses.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blockyard.scsi.cdb import check_control, check_flags, u16
from blockyard.scsi.commands import Access, Command, Handler, Request, good, usage
from blockyard.scsi.opcodes import Op
from blockyard.scsi.sense import (
    ILLEGAL_REQUEST,
    MODE_PARAMETERS_CHANGED,
    SAVING_PARAMS_NOT_SUPPORTED,
    ScsiError,
    invalid_cdb,
    invalid_param,
    param_list_length_error,
)
from blockyard.scsi.task import ScsiResult

if TYPE_CHECKING:
    from blockyard.scsi.disk import DiskUnit

CACHING, CONTROL, INFO_EXCEPTIONS, ALL_PAGES = 0x08, 0x0A, 0x1C, 0x3F
PC_CURRENT, PC_CHANGEABLE, PC_DEFAULT, PC_SAVED = 0, 1, 2, 3
WP = 0x80
DPOFUA = 0x10
WCE = 0x04
SWP = 0x08
_SHORT_BD = struct.Struct(">IxBH")  # blocks, block length (24 bits as B + H)
_LONG_BD = struct.Struct(">Q4xI")


@dataclass(slots=True)
class ModeState:
    wce: bool = True
    swp: bool = False


def _caching(state: ModeState, pc: int) -> bytes:
    page = bytearray(20)
    page[0:2] = (CACHING, 18)
    if pc == PC_CHANGEABLE:
        page[2] = WCE
    elif pc == PC_CURRENT and state.wce or pc == PC_DEFAULT:
        page[2] = WCE
    return bytes(page)


def _control(state: ModeState, pc: int) -> bytes:
    page = bytearray(12)
    page[0:2] = (CONTROL, 10)
    if pc == PC_CHANGEABLE:
        page[4] = SWP
        return bytes(page)
    page[3] = 0x10  # QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
    page[4] = SWP if pc == PC_CURRENT and state.swp else 0
    page[8:10] = b"\xff\xff"  # BUSY TIMEOUT PERIOD: unlimited
    return bytes(page)


def _info_exceptions(state: ModeState, pc: int) -> bytes:
    del state
    page = bytearray(12)
    page[0:2] = (INFO_EXCEPTIONS, 10)
    if pc != PC_CHANGEABLE:
        page[2] = 0x08  # DEXCPT: exception reporting disabled
    return bytes(page)


PAGES: dict[int, Callable[[ModeState, int], bytes]] = {
    CACHING: _caching,
    CONTROL: _control,
    INFO_EXCEPTIONS: _info_exceptions,
}


def _pages(state: ModeState, pc: int, page: int, subpage: int) -> bytes:
    if subpage not in (0x00, 0xFF):
        raise invalid_cdb(3)
    if page == ALL_PAGES:
        return b"".join(build(state, pc) for build in PAGES.values())
    build = PAGES.get(page)
    if build is None:
        raise invalid_cdb(2, 5)
    return build(state, pc)


def _block_descriptor(unit: DiskUnit, pc: int, long: bool) -> bytes:
    blocks = unit.capacity_blocks if pc != PC_CHANGEABLE else 0
    length = unit.block_size if pc != PC_CHANGEABLE else 0
    if long:
        return _LONG_BD.pack(blocks, length)
    return _SHORT_BD.pack(min(blocks, 0xFFFFFFFF), length >> 16, length & 0xFFFF)


def _device_specific(unit: DiskUnit) -> int:
    return (WP if unit.write_protected else 0) | DPOFUA


async def mode_sense6(unit: DiskUnit, req: Request) -> ScsiResult:
    """MODE SENSE(6) (SPC-4 6.11)."""
    cdb = req.cdb
    check_flags(cdb, 0x08)
    check_control(cdb, 6)
    pages, bd = _sense_common(unit, cdb, dbd=bool(cdb[1] & 0x08), long=False)
    body = bd + pages
    header = bytes((len(body) + 3, 0, _device_specific(unit), len(bd)))
    return good((header + body)[:cdb[4]])


async def mode_sense10(unit: DiskUnit, req: Request) -> ScsiResult:
    """MODE SENSE(10) (SPC-4 6.12): LLBAA selects the 16-byte block descriptor."""
    cdb = req.cdb
    check_flags(cdb, 0x18)
    check_control(cdb, 10)
    long = bool(cdb[1] & 0x10)
    pages, bd = _sense_common(unit, cdb, dbd=bool(cdb[1] & 0x08), long=long)
    body = bd + pages
    header = (len(body) + 6).to_bytes(2, "big") + bytes(
        (0, _device_specific(unit), 1 if bd and long else 0, 0)) + len(bd).to_bytes(2, "big")
    return good((header + body)[:u16(cdb, 7)])


def _sense_common(unit: DiskUnit, cdb: bytes, *, dbd: bool, long: bool) -> tuple[bytes, bytes]:
    pc, page = cdb[2] >> 6, cdb[2] & 0x3F
    if pc == PC_SAVED:
        raise ScsiError(ILLEGAL_REQUEST, *SAVING_PARAMS_NOT_SUPPORTED)
    pages = _pages(unit.mode, pc, page, cdb[3])
    bd = b"" if dbd else _block_descriptor(unit, pc, long)
    return pages, bd


# ---- MODE SELECT ---------------------------------------------------------------
async def mode_select6(unit: DiskUnit, req: Request) -> ScsiResult:
    """MODE SELECT(6) (SPC-4 6.9)."""
    check_flags(req.cdb, 0x11)
    check_control(req.cdb, 6)
    return _select(unit, req, req.cdb[4], header=4)


async def mode_select10(unit: DiskUnit, req: Request) -> ScsiResult:
    """MODE SELECT(10) (SPC-4 6.10)."""
    check_flags(req.cdb, 0x11)
    check_control(req.cdb, 10)
    return _select(unit, req, u16(req.cdb, 7), header=8)


def _select(unit: DiskUnit, req: Request, plen: int, header: int) -> ScsiResult:
    if req.cdb[1] & 0x01:
        raise invalid_cdb(1, 0)  # SP: no saved pages
    if plen == 0:
        return good()
    data = bytes(req.data_out[:plen])
    if plen < header or len(data) < plen:
        raise param_list_length_error()
    bdl = data[3] if header == 4 else u16(data, 6)
    if data[1 if header == 4 else 2]:
        raise invalid_param(1 if header == 4 else 2)  # MEDIUM TYPE
    _check_descriptor(unit, data[header:header + bdl], header)
    new = _parse_pages(unit.mode, data, header + bdl)
    if new != unit.mode:
        unit.set_mode(new)
        unit.notify(MODE_PARAMETERS_CHANGED, except_=req.nexus)
    return good(data_out_used=plen)


def _check_descriptor(unit: DiskUnit, bd: bytes, header: int) -> None:
    if not bd:
        return
    if len(bd) == 8:
        length = int.from_bytes(bd[5:8], "big")
    elif len(bd) == 16:
        length = int.from_bytes(bd[12:16], "big")
    else:
        raise invalid_param(3 if header == 4 else 7)
    if length not in (0, unit.block_size):
        raise invalid_param(header + len(bd) - 3)


def _parse_pages(current: ModeState, data: bytes, off: int) -> ModeState:
    new = ModeState(current.wce, current.swp)
    while off < len(data):
        if off + 2 > len(data):
            raise param_list_length_error()
        code, length = data[off] & 0x3F, data[off + 1]
        build = PAGES.get(code)
        if data[off] & 0xC0 or build is None:
            raise invalid_param(off, 7 if data[off] & 0x80 else None)
        page = data[off:off + 2 + length]
        cur, mask = build(current, PC_CURRENT), build(current, PC_CHANGEABLE)
        if length != len(cur) - 2:
            raise invalid_param(off + 1)
        if len(page) < len(cur):
            raise param_list_length_error()
        for i in range(2, len(cur)):
            if (page[i] ^ cur[i]) & ~mask[i] & 0xFF:
                raise invalid_param(off + i)
        if code == CACHING:
            new.wce = bool(page[2] & WCE)
        elif code == CONTROL:
            new.swp = bool(page[4] & SWP)
        off += len(cur)
    return new


def _cmd(op: int, name: str, handler: Handler, mask: bytes, access: Access) -> Command:
    return Command(op, None, name, handler, mask, access)


MODE_COMMANDS = [
    _cmd(Op.MODE_SELECT_6, "MODE SELECT(6)", mode_select6,
         usage(0x15, 0x11, 0, 0, 0xFF, 0x04), Access.WRITE),
    _cmd(Op.MODE_SENSE_6, "MODE SENSE(6)", mode_sense6,
         usage(0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x04), Access.READ),
    _cmd(Op.MODE_SELECT_10, "MODE SELECT(10)", mode_select10,
         usage(0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x04), Access.WRITE),
    _cmd(Op.MODE_SENSE_10, "MODE SENSE(10)", mode_sense10,
         usage(0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x04), Access.READ),
]
