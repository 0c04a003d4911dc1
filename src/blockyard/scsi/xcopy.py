"""Third-party copy, LID1 flavour: EXTENDED COPY and RECEIVE COPY RESULTS (SPC-4 6.3, 6.18).

The copy manager copies between logical units of the same target device,
block device to block device (segment descriptor type 02h), the units named
by Identification Descriptor CSCD descriptors (E4h) whose designator
matches one of the unit's Device Identification designators (VPD 83h). The
copy runs inside the EXTENDED COPY command; RECEIVE COPY RESULTS / COPY
STATUS afterwards reports it per I_T nexus and list identifier.

Parameter list errors are ILLEGAL REQUEST (PARAMETER LIST LENGTH ERROR, TOO
MANY ... DESCRIPTORS, UNSUPPORTED ... DESCRIPTOR TYPE CODE, INVALID FIELD
IN PARAMETER LIST); problems met while copying are COPY ABORTED (SPC-4 6.3.3).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from blockyard.scsi.cdb import check_control, u16, u32
from blockyard.scsi.commands import Access, Command, Request, good, usage
from blockyard.scsi.opcodes import Op, SaCopyIn, SaCopyOut
from blockyard.scsi.sense import (
    COPY_ABORTED,
    COPY_TARGET_DEVICE_NOT_REACHABLE,
    ILLEGAL_REQUEST,
    NO_ADDITIONAL_SENSE,
    TOO_MANY_SEGMENT_DESCRIPTORS,
    TOO_MANY_TARGET_DESCRIPTORS,
    UNREACHABLE_COPY_TARGET,
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE,
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE,
    ScsiError,
    invalid_cdb,
    invalid_param,
    param_list_length_error,
)
from blockyard.scsi.task import ScsiResult

if TYPE_CHECKING:
    from blockyard.scsi.disk import DiskUnit

MAX_CSCD_DESCRIPTORS = 2
MAX_SEGMENT_DESCRIPTORS = 4
MAX_DESCRIPTOR_LIST_LENGTH = 1024
MAX_SEGMENT_LENGTH = 1 << 30  # bytes
CSCD_IDENTIFICATION = 0xE4
SEGMENT_BLOCK_TO_BLOCK = 0x02
CSCD_LEN, SEGMENT_LEN, HEADER_LEN = 32, 28, 16
COPY_CHUNK = 1 << 20
LIST_ID_NOT_VALID = 3

_HEADER = struct.Struct(">BBH4xII")
_B2B = struct.Struct(">BBHHH2xHQQ")
_OP_PARAMS = struct.Struct(">IB3xHHIIIII2xHBBBB3xB")


@dataclass(frozen=True, slots=True)
class CopyStatus:
    """A finished EXTENDED COPY, kept per (I_T nexus, list identifier) on the unit."""

    segments: int
    transferred: int  # bytes


def copy_aborted(code: tuple[int, int] = NO_ADDITIONAL_SENSE) -> ScsiError:
    return ScsiError(COPY_ABORTED, *code)


async def extended_copy(unit: DiskUnit, req: Request) -> ScsiResult:
    """EXTENDED COPY (LID1) (SPC-4 6.3): block to block segments between our units."""
    cdb = req.cdb
    check_control(cdb, 16)
    if cdb[1] & 0x1F != SaCopyOut.EXTENDED_COPY_LID1:
        raise invalid_cdb(1, 4)
    plen = u32(cdb, 10)
    if plen == 0:
        return good()
    params = bytes(req.data_out[:plen])
    if plen < HEADER_LEN or len(params) < plen:
        raise param_list_length_error()
    list_id, flags, cscd_len, seg_len, inline_len = _HEADER.unpack_from(params)
    _check_lengths(plen, cscd_len, seg_len, inline_len)
    targets = [_target(unit, params, HEADER_LEN + i * CSCD_LEN)
               for i in range(cscd_len // CSCD_LEN)]
    segments = _segments(params, HEADER_LEN + cscd_len, seg_len)
    done = 0
    for seg in segments:
        done += await _copy_segment(unit, targets, seg)
    if (flags >> 3) & 0x03 != LIST_ID_NOT_VALID:
        unit.copies[(req.nexus, list_id)] = CopyStatus(len(segments), done)
    return good(data_out_used=plen)


def _check_lengths(plen: int, cscd_len: int, seg_len: int, inline_len: int) -> None:
    if HEADER_LEN + cscd_len + seg_len + inline_len > plen:
        raise param_list_length_error()
    if cscd_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH:
        raise param_list_length_error()
    if inline_len:
        raise invalid_param(12)  # MAXIMUM INLINE DATA LENGTH is 0
    if cscd_len > MAX_CSCD_DESCRIPTORS * CSCD_LEN:
        raise ScsiError(ILLEGAL_REQUEST, *TOO_MANY_TARGET_DESCRIPTORS)
    if cscd_len % CSCD_LEN:
        raise invalid_param(2)


def _target(unit: DiskUnit, params: bytes, off: int) -> DiskUnit | None:
    """An Identification Descriptor CSCD descriptor (SPC-4 6.3.6.2); None for NUL."""
    if params[off] != CSCD_IDENTIFICATION:
        raise ScsiError(ILLEGAL_REQUEST, *UNSUPPORTED_TARGET_DESCRIPTOR_TYPE)
    nul, pdt = params[off + 1] & 0x20, params[off + 1] & 0x1F  # bits 7-6: ignored in SPC-4
    if nul:
        return None
    if pdt != 0:
        raise invalid_param(off + 1, 4)
    want = _designator_key(params[off + 4:off + 24])
    found = _find_unit(unit, want)
    if found is not None and int.from_bytes(params[off + 29:off + 32], "big") not in (
            0, found.block_size):
        raise invalid_param(off + 29)
    return found


def _designator_key(desc: bytes) -> tuple[int, int, bytes]:
    return desc[0] & 0x0F, desc[1] & 0x3F, desc[4:4 + desc[3]]


def _find_unit(unit: DiskUnit, want: tuple[int, int, bytes]) -> DiskUnit | None:
    units = unit.device.luns.values() if unit.device is not None else [unit]
    for candidate in units:
        page = candidate.vpd_page(0x83)
        off = 4
        while page is not None and off + 4 <= len(page):
            if _designator_key(page[off:off + 4 + page[off + 3]]) == want:
                return candidate  # type: ignore[no-any-return]
            off += 4 + page[off + 3]
    return None


def _segments(params: bytes, off: int, length: int) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    end = off + length
    while off < end:
        if params[off] != SEGMENT_BLOCK_TO_BLOCK:
            raise ScsiError(ILLEGAL_REQUEST, *UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE)
        if off + SEGMENT_LEN > end or u16(params, off + 2) != SEGMENT_LEN - 4:
            raise param_list_length_error()
        if len(out) == MAX_SEGMENT_DESCRIPTORS:
            raise ScsiError(ILLEGAL_REQUEST, *TOO_MANY_SEGMENT_DESCRIPTORS)
        out.append(_B2B.unpack_from(params, off))
        off += SEGMENT_LEN
    return out


async def _copy_segment(unit: DiskUnit, targets: list[DiskUnit | None],
                        seg: tuple[int, ...]) -> int:
    """Block device to block device (SPC-4 6.3.7.5); returns the bytes copied."""
    _, _, _, src_i, dst_i, blocks, src_lba, dst_lba = seg
    if src_i >= len(targets) or dst_i >= len(targets):
        raise copy_aborted(UNREACHABLE_COPY_TARGET)
    src, dst = targets[src_i], targets[dst_i]
    if src is None or dst is None:
        raise copy_aborted(COPY_TARGET_DEVICE_NOT_REACHABLE)
    if src.block_size != dst.block_size or blocks * src.block_size > MAX_SEGMENT_LENGTH:
        raise copy_aborted()
    if src_lba + blocks > src.capacity_blocks or dst_lba + blocks > dst.capacity_blocks:
        raise copy_aborted()
    if not dst.medium_present or not src.medium_present:
        raise copy_aborted(COPY_TARGET_DEVICE_NOT_REACHABLE)
    dst.check_writable()
    step = max(1, COPY_CHUNK // src.block_size)
    for off in range(0, blocks, step):
        n = min(step, blocks - off)
        data = await src.read(src_lba + off, n)
        async with dst.gate.shared():
            await dst.write(dst_lba + off, data)
    return blocks * src.block_size


async def receive_copy_results(unit: DiskUnit, req: Request) -> ScsiResult:
    """RECEIVE COPY RESULTS (SPC-4 6.18): COPY STATUS and OPERATING PARAMETERS."""
    cdb = req.cdb
    check_control(cdb, 16)
    sa, alloc = cdb[1] & 0x1F, u32(cdb, 10)
    if sa == SaCopyIn.OPERATING_PARAMETERS:
        return good(operating_parameters()[:alloc])
    status = unit.copies.get((req.nexus, cdb[2]))
    if status is None:
        raise invalid_cdb(2)  # no such list identifier
    data = struct.pack(">IBHBI", 8, 0, min(status.segments, 0xFFFF), 0, status.transferred)
    return good(data[:alloc])


def operating_parameters() -> bytes:
    """OPERATING PARAMETERS (SPC-4 6.18.4), with the implemented descriptor types."""
    kinds = bytes((SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION))
    body = _OP_PARAMS.pack(0, 0x01, MAX_CSCD_DESCRIPTORS, MAX_SEGMENT_DESCRIPTORS,
                           MAX_DESCRIPTOR_LIST_LENGTH, MAX_SEGMENT_LENGTH, 0, 0, 0, 1, 1,
                           9, 0, 0, len(kinds)) + kinds
    return (len(body) - 4).to_bytes(4, "big") + body[4:]


def third_party_copy_vpd() -> bytes:
    """Third-party Copy VPD page body: the Supported Commands descriptor (SPC-4 7.8.17)."""
    commands = bytes((Op.EXTENDED_COPY, 1, SaCopyOut.EXTENDED_COPY_LID1,
                      Op.RECEIVE_COPY_RESULTS, 2, SaCopyIn.COPY_STATUS,
                      SaCopyIn.OPERATING_PARAMETERS))
    body = bytes((len(commands),)) + commands
    body += bytes(-len(body) % 4)
    return struct.pack(">HH", 0x0001, len(body)) + body


_CTL = 0x04
_L4 = (0xFF,) * 4

XCOPY_COMMANDS = [
    Command(Op.EXTENDED_COPY, SaCopyOut.EXTENDED_COPY_LID1, "EXTENDED COPY(LID1)",
            extended_copy, usage(0x83, 0x1F, *(0,) * 8, *_L4, 0, _CTL), Access.WRITE,
            needs_medium=True),
    Command(Op.RECEIVE_COPY_RESULTS, SaCopyIn.COPY_STATUS, "RECEIVE COPY STATUS(LID1)",
            receive_copy_results, usage(0x84, 0x1F, 0xFF, *(0,) * 7, *_L4, 0, _CTL),
            Access.READ),
    Command(Op.RECEIVE_COPY_RESULTS, SaCopyIn.OPERATING_PARAMETERS,
            "RECEIVE COPY OPERATING PARAMETERS", receive_copy_results,
            usage(0x84, 0x1F, 0, *(0,) * 7, *_L4, 0, _CTL), Access.FREE),
]
