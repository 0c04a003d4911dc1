"""PDUs sent by the initiator (RFC 7143 §11.3, 11.5, 11.7.1, 11.10, 11.12, 11.14, 11.16, 11.18).

Each class packs and unpacks its BHS; see ``pdu.py`` for the shared shape.
Field names follow the RFC (``cmdsn``, ``exp_statsn``, ``ttt`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blockyard.iscsi import pdu_fields as pf
from blockyard.iscsi.constants import (
    AHS_BIDI_READ_LENGTH,
    AHS_EXTENDED_CDB,
    CMD_ATTR_MASK,
    CMD_FINAL,
    CMD_READ,
    CMD_WRITE,
    FINAL_BIT,
    IMMEDIATE_BIT,
    RESERVED_TAG,
    Opcode,
)
from blockyard.iscsi.pdu import (
    GENERIC,
    SCSI_CMD,
    Buffer,
    Pdu,
    ahs_dsl,
    iter_ahs,
    pack_ahs,
    register,
)

_I = IMMEDIATE_BIT


def _b0(opcode: int, immediate: bool) -> int:
    return opcode | _I if immediate else opcode


@register
@dataclass(slots=True)
class NopOut(Pdu):
    """§11.18: a ping (valid ITT) or the answer to a target ping (ITT 0xffffffff)."""

    OPCODE = Opcode.NOP_OUT
    immediate: bool = False
    lun: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    cmdsn: int = 0
    exp_statsn: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return GENERIC.pack(_b0(self.OPCODE, self.immediate), FINAL_BIT, 0, 0,
                            ahs_dsl(b"", len(self.data)), self.lun, self.itt, self.ttt,
                            self.cmdsn, self.exp_statsn, 0, 0, 0, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> NopOut:
        return cls(bool(f[0] & _I), f[5], f[6], f[7], f[8], f[9], data)


@register
@dataclass(slots=True)
class ScsiCommandPdu(Pdu):
    """§11.3: a SCSI command; CDBs over 16 bytes spill into an extended-CDB AHS."""

    OPCODE = Opcode.SCSI_COMMAND
    STRUCT = SCSI_CMD
    immediate: bool = False
    final: bool = True
    read: bool = False
    write: bool = False
    attr: int = 1
    lun: int = 0
    itt: int = 0
    edtl: int = 0
    cmdsn: int = 0
    exp_statsn: int = 0
    cdb: bytes = b""
    bidi_read_length: int | None = None
    data: Buffer = b""

    def encode_header(self) -> bytes:
        flags = (self.attr & CMD_ATTR_MASK) | (CMD_FINAL if self.final else 0)
        flags |= (CMD_READ if self.read else 0) | (CMD_WRITE if self.write else 0)
        ahs = b""
        if len(self.cdb) > 16:
            ahs += pack_ahs(AHS_EXTENDED_CDB, b"\0" + self.cdb[16:])
        if self.bidi_read_length is not None:
            ahs += pack_ahs(AHS_BIDI_READ_LENGTH, b"\0" + self.bidi_read_length.to_bytes(4, "big"))
        return SCSI_CMD.pack(_b0(self.OPCODE, self.immediate), flags, 0, 0,
                             ahs_dsl(ahs, len(self.data)), self.lun, self.itt, self.edtl,
                             self.cmdsn, self.exp_statsn, self.cdb[:16].ljust(16, b"\0")) + ahs

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> ScsiCommandPdu:
        flags = f[1]
        cdb: bytes = f[10]
        bidi = None
        if ahs:
            for ahs_type, specific in iter_ahs(ahs):
                if ahs_type == AHS_EXTENDED_CDB:
                    cdb = cdb + specific[1:]
                elif ahs_type == AHS_BIDI_READ_LENGTH and len(specific) >= 5:
                    bidi = int.from_bytes(specific[1:5], "big")
        return cls(bool(f[0] & _I), bool(flags & CMD_FINAL), bool(flags & CMD_READ),
                   bool(flags & CMD_WRITE), flags & CMD_ATTR_MASK, f[5], f[6], f[7], f[8],
                   f[9], cdb, bidi, data)


@register
@dataclass(slots=True)
class TaskMgmtRequest(Pdu):
    """§11.5: a task management function request."""

    OPCODE = Opcode.TASK_MGMT_REQUEST
    immediate: bool = True
    function: int = 1
    lun: int = 0
    itt: int = 0
    ref_itt: int = RESERVED_TAG
    cmdsn: int = 0
    exp_statsn: int = 0
    ref_cmdsn: int = 0
    exp_datasn: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return GENERIC.pack(_b0(self.OPCODE, self.immediate), FINAL_BIT | self.function, 0, 0,
                            ahs_dsl(b"", len(self.data)), self.lun, self.itt, self.ref_itt,
                            self.cmdsn, self.exp_statsn, self.ref_cmdsn, self.exp_datasn, 0, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> TaskMgmtRequest:
        return cls(bool(f[0] & _I), f[1] & 0x7F, f[5], f[6], f[7], f[8], f[9], f[10], f[11],
                   data)


@register
@dataclass(slots=True)
class LoginRequest(Pdu):
    """§11.12: always immediate; ISID and TSIH share bytes 8-15."""

    OPCODE = Opcode.LOGIN_REQUEST
    transit: bool = False
    cont: bool = False
    csg: int = 0
    nsg: int = 0
    version_max: int = 0
    version_min: int = 0
    isid: int = 0
    tsih: int = 0
    itt: int = 0
    cid: int = 0
    cmdsn: int = 0
    exp_statsn: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        flags = pf.login_flags(self.transit, self.cont, self.csg, self.nsg)
        return GENERIC.pack(self.OPCODE | _I, flags, self.version_max, self.version_min,
                            ahs_dsl(b"", len(self.data)), pf.halves(self.isid, self.tsih), self.itt,
                            self.cid << 16, self.cmdsn, self.exp_statsn, 0, 0, 0, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> LoginRequest:
        return cls(*pf.split_login_flags(f[1]), f[2], f[3], *pf.split_halves(f[5]), f[6],
                   f[7] >> 16, f[8], f[9], data)


@register
@dataclass(slots=True)
class TextRequest(Pdu):
    """§11.10: text keys in full feature phase (SendTargets, renegotiation)."""

    OPCODE = Opcode.TEXT_REQUEST
    immediate: bool = False
    final: bool = True
    cont: bool = False
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    cmdsn: int = 0
    exp_statsn: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        flags = pf.text_flags(self.final, self.cont)
        return GENERIC.pack(_b0(self.OPCODE, self.immediate), flags, 0, 0,
                            ahs_dsl(b"", len(self.data)), self.lun, self.itt, self.ttt,
                            self.cmdsn, self.exp_statsn, 0, 0, 0, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> TextRequest:
        return cls(bool(f[0] & _I), *pf.split_text_flags(f[1]), f[5], f[6], f[7], f[8], f[9], data)


@register
@dataclass(slots=True)
class DataOut(Pdu):
    """§11.7: write data, unsolicited (TTT 0xffffffff) or answering an R2T."""

    OPCODE = Opcode.DATA_OUT
    final: bool = True
    lun: int = 0
    itt: int = 0
    ttt: int = RESERVED_TAG
    exp_statsn: int = 0
    datasn: int = 0
    offset: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return GENERIC.pack(self.OPCODE, FINAL_BIT if self.final else 0, 0, 0,
                            ahs_dsl(b"", len(self.data)), self.lun, self.itt, self.ttt, 0,
                            self.exp_statsn, 0, self.datasn, self.offset, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> DataOut:
        return cls(bool(f[1] & FINAL_BIT), f[5], f[6], f[7], f[9], f[11], f[12], data)


@register
@dataclass(slots=True)
class LogoutRequest(Pdu):
    """§11.14: close the session, the connection, or remove it for recovery."""

    OPCODE = Opcode.LOGOUT_REQUEST
    immediate: bool = True
    reason: int = 0
    itt: int = 0
    cid: int = 0
    cmdsn: int = 0
    exp_statsn: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return GENERIC.pack(_b0(self.OPCODE, self.immediate), FINAL_BIT | self.reason, 0, 0,
                            ahs_dsl(b"", len(self.data)), 0, self.itt, self.cid << 16,
                            self.cmdsn, self.exp_statsn, 0, 0, 0, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> LogoutRequest:
        return cls(bool(f[0] & _I), f[1] & 0x7F, f[6], f[7] >> 16, f[8], f[9], data)


@register
@dataclass(slots=True)
class SnackRequest(Pdu):
    """§11.16: retransmission requests (only meaningful at ErrorRecoveryLevel > 0)."""

    OPCODE = Opcode.SNACK_REQUEST
    type: int = 0
    lun: int = 0
    itt: int = RESERVED_TAG
    ttt: int = RESERVED_TAG
    exp_statsn: int = 0
    begrun: int = 0
    runlength: int = 0
    data: Buffer = b""

    def encode_header(self) -> bytes:
        return GENERIC.pack(self.OPCODE, FINAL_BIT | (self.type & 0x0F), 0, 0,
                            ahs_dsl(b"", len(self.data)), self.lun, self.itt, self.ttt, 0,
                            self.exp_statsn, 0, self.begrun, self.runlength, 0)

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> SnackRequest:
        return cls(f[1] & 0x0F, f[5], f[6], f[7], f[9], f[11], f[12], data)
