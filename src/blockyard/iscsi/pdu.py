"""The iSCSI PDU codec base: the 48-byte BHS, AHS, LUN fields (RFC 7143 §11.2).

Every PDU is a small slotted dataclass with ``encode_header()`` (BHS + AHS
as bytes) and a ``data`` attribute (the data segment, any buffer, never
copied by the codec).  ``decode_header(buf, offset, ahs, data)`` builds the
right class from a BHS found at ``buf[offset:offset+48]``: one
``struct.unpack_from`` per PDU, dispatched on the opcode through
``DECODERS``.  Framing (digests, padding, reading from a stream) lives in
``framing.py``; the PDU classes are in ``pdu_initiator.py`` (initiator to
target) and ``pdu_target.py`` (target to initiator).  Both directions encode
and decode, so the same code serves the target now and the initiator later.

Most BHS layouts are the same shape: four bytes, the TotalAHSLength and
24-bit DataSegmentLength word, eight bytes of LUN (or ISID + TSIH), the
Initiator Task Tag, then seven 32-bit words.  ``GENERIC`` unpacks exactly
that; the SCSI Command, whose CDB fills the last 16 bytes, has its own
struct.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.constants import OPCODE_MASK, RejectReason

Buffer = bytes | bytearray | memoryview

# b0 b1 b2 b3 | ahs_dsl | q8 | itt w20 w24 w28 w32 w36 w40 w44
GENERIC = struct.Struct(">BBBBIQ8I")
# b0 b1 b2 b3 | ahs_dsl | lun | itt edtl cmdsn expstatsn | cdb[16]
SCSI_CMD = struct.Struct(">BBBBIQIIII16s")
assert GENERIC.size == SCSI_CMD.size == 48

_AHS_HDR = struct.Struct(">HB")


def ahs_dsl(ahs: bytes, data_length: int) -> int:
    """The word at bytes 4-7: TotalAHSLength (4-byte words) and DataSegmentLength."""
    return (len(ahs) >> 2) << 24 | data_length


def encode_lun(lun: int) -> int:
    """A LUN number as the 8-byte SAM LUN field (peripheral below 256, else flat)."""
    if lun < 256:
        return lun << 48
    if lun < 16384:
        return (0x4000 | lun) << 48
    raise ValueError(f"LUN {lun} needs an addressing method we do not use")


def decode_lun(field: int) -> int:
    """The LUN number of an 8-byte LUN field (peripheral or flat addressing)."""
    return (field >> 48) & 0x3FFF


def encode_isid(isid: int) -> int:
    return isid & 0xFFFFFFFFFFFF


def pack_ahs(ahs_type: int, specific: bytes) -> bytes:
    """One AHS (§11.2.2): AHSLength, AHSType, specific bytes, padded to 4."""
    raw = _AHS_HDR.pack(len(specific), ahs_type) + specific
    return raw + b"\0" * (-len(raw) & 3)


def iter_ahs(ahs: bytes) -> list[tuple[int, bytes]]:
    """Split the AHS area into (type, specific bytes) pairs."""
    out = []
    pos = 0
    while pos + 3 <= len(ahs):
        length, ahs_type = _AHS_HDR.unpack_from(ahs, pos)
        end = pos + 3 + length
        if end > len(ahs):
            raise RemoteProtocolError("AHS runs past the header", RejectReason.PROTOCOL_ERROR)
        out.append((ahs_type, bytes(ahs[pos + 3:end])))
        pos = (end + 3) & ~3
    return out


class Pdu:
    """Base of every PDU class; subclasses are slotted dataclasses."""

    __slots__ = ()
    OPCODE: ClassVar[int]
    STRUCT: ClassVar[struct.Struct] = GENERIC
    data: Buffer
    itt: int

    def encode_header(self) -> bytes:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    @classmethod
    def from_fields(cls, f: tuple[Any, ...], ahs: bytes, data: Buffer) -> Pdu:
        raise NotImplementedError  # pragma: no cover


DECODERS: dict[int, type[Pdu]] = {}


def register(cls: type[Pdu]) -> type[Pdu]:
    DECODERS[cls.OPCODE] = cls
    return cls


def decode_header(buf: Buffer, offset: int = 0, ahs: bytes = b"",
                  data: Buffer = b"") -> Pdu:
    """Decode the BHS at ``buf[offset:]`` plus its AHS and data segment."""
    opcode = buf[offset] & OPCODE_MASK
    cls = DECODERS.get(opcode)
    if cls is None:
        raise RemoteProtocolError(f"unknown opcode 0x{opcode:02x}",
                                  RejectReason.COMMAND_NOT_SUPPORTED, fatal=False)
    return cls.from_fields(cls.STRUCT.unpack_from(buf, offset), ahs, data)


def opcode_of(buf: Buffer, offset: int = 0) -> int:
    return buf[offset] & OPCODE_MASK
