"""PDUs sent by the target (RFC 7143 §11.4, 11.6, 11.7, 11.8, 11.9, 11.11, 11.13, 11.15,
11.17, 11.19).

The hot-path headers (Data-In, SCSI Response, R2T) also have plain
``pack_*`` functions the target state machine calls without building an
object; the dataclasses delegate to them, so tests of one cover the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blockyard.iscsi import pdu_fields as pf
from blockyard.iscsi.constants import (
    DATA_IN_ACK,
    DATA_IN_STATUS,
    FINAL_BIT,
    RESERVED_TAG,
    Opcode,
)
from blockyard.iscsi.pdu import GENERIC, Buffer, Pdu, register

_pack = GENERIC.pack
_RESIDUAL_MASK = 0x1E


def pack_data_in(flags: int, status: int, dsl: int, lun: int, itt: int, ttt: int, statsn: int,
                 exp_cmdsn: int, max_cmdsn: int, datasn: int, offset: int,
                 residual: int) -> bytes:
    """§11.7: ``flags`` holds F, A, O, U and S exactly as in byte 1."""
    return _pack(Opcode.DATA_IN, flags, 0, status, dsl, lun, itt, ttt, statsn, exp_cmdsn,
                 max_cmdsn, datasn, offset, residual)


def pack_scsi_response(flags: int, response: int, status: int, dsl: int, itt: int, statsn: int,
                       exp_cmdsn: int, max_cmdsn: int, exp_datasn: int, bidi_residual: int,
                       residual: int) -> bytes:
    """§11.4: ``flags`` holds the o/u/O/U residual bits (bit 7 is always set)."""
    return _pack(Opcode.SCSI_RESPONSE, FINAL_BIT | flags, response, status, dsl, 0, itt, 0,
                 statsn, exp_cmdsn, max_cmdsn, exp_datasn, bidi_residual, residual)


def pack_r2t(lun: int, itt: int, ttt: int, statsn: int, exp_cmdsn: int, max_cmdsn: int,
             r2tsn: int, offset: int, length: int) -> bytes:
    """§11.8: Ready To Transfer ``length`` bytes at ``offset``."""
    return _pack(Opcode.R2T, FINAL_BIT, 0, 0, 0, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn,
                 r2tsn, offset, length)


@register
@dataclass(slots=True)
class NopIn(Pdu):
    """§11.19: answer to a ping (valid ITT) or a target ping (valid TTT)."""

    OPCODE = Opcode.NOP_IN
    lun: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return _pack(self.OPCODE, FINAL_BIT, 0, 0, len(self.data), self.lun, self.itt, self.ttt,
                     self.statsn, self.exp_cmdsn, self.max_cmdsn, 0, 0, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> NopIn:
        return cls(f[5], f[6], f[7], f[8], f[9], f[10], data)


@register
@dataclass(slots=True)
class ScsiResponse(Pdu):
    """§11.4: status, residuals and (data segment) sense data."""

    OPCODE = Opcode.SCSI_RESPONSE
    flags: int = 0
    response: int = 0
    status: int = 0
    itt: int = 0
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    exp_datasn: int = 0
    bidi_residual: int = 0
    residual: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return pack_scsi_response(self.flags, self.response, self.status, len(self.data),
                                  self.itt, self.statsn, self.exp_cmdsn, self.max_cmdsn,
                                  self.exp_datasn, self.bidi_residual, self.residual)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> ScsiResponse:
        return cls(f[1] & _RESIDUAL_MASK, f[2], f[3], f[6], f[8], f[9], f[10], f[11], f[12],
                   f[13], data)

    @property
    def sense(self) -> bytes:
        """The sense bytes of the data segment (2-byte SenseLength first, §11.4.7)."""
        if len(self.data) < 2:
            return b""
        n = int.from_bytes(self.data[:2], "big")
        return bytes(self.data[2:2 + n])


@register
@dataclass(slots=True)
class TaskMgmtResponse(Pdu):
    """§11.6."""

    OPCODE = Opcode.TASK_MGMT_RESPONSE
    response: int = 0
    itt: int = 0
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return _pack(self.OPCODE, FINAL_BIT, self.response, 0, len(self.data), 0, self.itt, 0,
                     self.statsn, self.exp_cmdsn, self.max_cmdsn, 0, 0, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> TaskMgmtResponse:
        return cls(f[2], f[6], f[8], f[9], f[10], data)


@register
@dataclass(slots=True)
class LoginResponse(Pdu):
    """§11.13: ``status`` is Status-Class << 8 | Status-Detail."""

    OPCODE = Opcode.LOGIN_RESPONSE
    transit: bool = False
    cont: bool = False
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_active: int = 0
    isid: int = 0
    tsih: int = 0
    itt: int = 0
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    status: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        flags = pf.login_flags(self.transit, self.cont, self.csg, self.nsg)
        return _pack(self.OPCODE, flags, self.version_max, self.version_active, len(self.data),
                     pf.halves(self.isid, self.tsih), self.itt, 0, self.statsn, self.exp_cmdsn,
                     self.max_cmdsn, self.status << 16, 0, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> LoginResponse:
        return cls(*pf.split_login_flags(f[1]), f[2], f[3], *pf.split_halves(f[5]), f[6], f[8],
                   f[9], f[10], f[11] >> 16, data)


@register
@dataclass(slots=True)
class TextResponse(Pdu):
    """§11.11."""

    OPCODE = Opcode.TEXT_RESPONSE
    final: bool = True
    cont: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return _pack(self.OPCODE, pf.text_flags(self.final, self.cont), 0, 0, len(self.data),
                     self.lun, self.itt, self.ttt, self.statsn, self.exp_cmdsn, self.max_cmdsn,
                     0, 0, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> TextResponse:
        return cls(*pf.split_text_flags(f[1]), f[5], f[6], f[7], f[8], f[9], f[10], data)


@register
@dataclass(slots=True)
class DataIn(Pdu):
    """§11.7: read data; with ``status_present`` it also carries the status (phase collapse)."""

    OPCODE = Opcode.DATA_IN
    final: bool = False
    ack: bool = False
    residual_flags: int = 0
    status_present: bool = False
    status: int = 0
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    datasn: int = 0
    offset: int = 0
    residual: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        flags = (FINAL_BIT if self.final else 0) | (DATA_IN_ACK if self.ack else 0)
        flags |= self.residual_flags & 0x06 | (DATA_IN_STATUS if self.status_present else 0)
        return pack_data_in(flags, self.status, len(self.data), self.lun, self.itt, self.ttt,
                            self.statsn, self.exp_cmdsn, self.max_cmdsn, self.datasn,
                            self.offset, self.residual)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> DataIn:
        flags = f[1]
        return cls(bool(flags & FINAL_BIT), bool(flags & DATA_IN_ACK), flags & 0x06,
                   bool(flags & DATA_IN_STATUS), f[3], f[5], f[6], f[7], f[8], f[9], f[10],
                   f[11], f[12], f[13], data)


@register
@dataclass(slots=True)
class LogoutResponse(Pdu):
    """§11.15."""

    OPCODE = Opcode.LOGOUT_RESPONSE
    response: int = 0
    itt: int = 0
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    time2wait: int = 0
    time2retain: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return _pack(self.OPCODE, FINAL_BIT, self.response, 0, len(self.data), 0, self.itt, 0,
                     self.statsn, self.exp_cmdsn, self.max_cmdsn, 0,
                     pf.halves(self.time2wait, self.time2retain), 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> LogoutResponse:
        return cls(f[2], f[6], f[8], f[9], f[10], *pf.split_halves(f[12]), data)


@register
@dataclass(slots=True)
class R2T(Pdu):
    """§11.8."""

    OPCODE = Opcode.R2T
    lun: int = 0
    itt: int = 0
    ttt: int = 0
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    r2tsn: int = 0
    offset: int = 0
    length: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return pack_r2t(self.lun, self.itt, self.ttt, self.statsn, self.exp_cmdsn,
                        self.max_cmdsn, self.r2tsn, self.offset, self.length)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> R2T:
        return cls(f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12], f[13], data)


@register
@dataclass(slots=True)
class AsyncMessage(Pdu):
    """§11.9: ``event`` is an AsyncEvent; Parameter1-3 depend on it."""

    OPCODE = Opcode.ASYNC_MESSAGE
    lun: int = 0
    itt: int = RESERVED_TAG
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    event: int = 0
    vcode: int = 0
    param1: int = 0
    param2: int = 0
    param3: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return _pack(self.OPCODE, FINAL_BIT, 0, 0, len(self.data), self.lun, self.itt, 0,
                     self.statsn, self.exp_cmdsn, self.max_cmdsn,
                     self.event << 24 | self.vcode << 16 | self.param1,
                     pf.halves(self.param2, self.param3), 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> AsyncMessage:
        w36, w40 = f[11], f[12]
        return cls(f[5], f[6], f[8], f[9], f[10], w36 >> 24, (w36 >> 16) & 0xFF, w36 & 0xFFFF,
                   *pf.split_halves(w40), data)


@register
@dataclass(slots=True)
class Reject(Pdu):
    """§11.17: ``data`` is the complete header of the rejected PDU."""

    OPCODE = Opcode.REJECT
    reason: int = 0
    itt: int = RESERVED_TAG
    statsn: int = 0
    exp_cmdsn: int = 0
    max_cmdsn: int = 0
    datasn: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return _pack(self.OPCODE, FINAL_BIT, self.reason, 0, len(self.data), 0, self.itt, 0,
                     self.statsn, self.exp_cmdsn, self.max_cmdsn, self.datasn, 0, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> Reject:
        return cls(f[2], f[6], f[8], f[9], f[10], f[11], data)
