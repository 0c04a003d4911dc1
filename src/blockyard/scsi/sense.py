"""Sense data (SPC-4 4.5) and the exceptions handlers raise to produce it.

Handlers never build a ``ScsiResult`` for an error themselves: they raise
``ScsiError(key, asc, ascq, ...)`` (CHECK CONDITION with fixed-format sense,
SPC-4 4.5.3) or ``ReservationConflict`` (status 18h, no sense, SPC-4 5.9),
and the dispatcher turns the exception into the result.

Additional sense codes are ``(asc, ascq)`` pairs named after SPC-4 Annex D;
``ScsiError`` takes them unpacked: ``ScsiError(ILLEGAL_REQUEST, *LBA_OUT_OF_RANGE)``.
For INVALID FIELD IN CDB / PARAMETER LIST the sense-key-specific bytes carry a
field pointer (SPC-4 4.5.2.4.2); libiscsi checks it for MAINTENANCE IN, where
field pointer 1 (or none) means "service action not supported".
"""

from __future__ import annotations

from enum import IntEnum

from blockyard.scsi.task import ScsiResult, Status


class SenseKey(IntEnum):
    """SPC-4 4.5.6, table 45."""

    NO_SENSE = 0x0
    RECOVERED_ERROR = 0x1
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    BLANK_CHECK = 0x8
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    MISCOMPARE = 0xE


NO_SENSE = SenseKey.NO_SENSE
NOT_READY = SenseKey.NOT_READY
MEDIUM_ERROR = SenseKey.MEDIUM_ERROR
HARDWARE_ERROR = SenseKey.HARDWARE_ERROR
ILLEGAL_REQUEST = SenseKey.ILLEGAL_REQUEST
UNIT_ATTENTION = SenseKey.UNIT_ATTENTION
DATA_PROTECT = SenseKey.DATA_PROTECT
COPY_ABORTED = SenseKey.COPY_ABORTED
MISCOMPARE = SenseKey.MISCOMPARE

# ---- additional sense codes (SPC-4 annex D.2) --------------------------------
NO_ADDITIONAL_SENSE = (0x00, 0x00)
LU_NOT_READY_CAUSE_NOT_REPORTABLE = (0x04, 0x00)
WRITE_ERROR = (0x0C, 0x00)
INVALID_FIELD_IN_CDB_IU = (0x0E, 0x03)  # INVALID FIELD IN COMMAND INFORMATION UNIT
UNRECOVERED_READ_ERROR = (0x11, 0x00)
PARAMETER_LIST_LENGTH_ERROR = (0x1A, 0x00)
MISCOMPARE_DURING_VERIFY = (0x1D, 0x00)
INVALID_OPCODE = (0x20, 0x00)
LBA_OUT_OF_RANGE = (0x21, 0x00)
INVALID_FIELD_IN_CDB = (0x24, 0x00)
LU_NOT_SUPPORTED = (0x25, 0x00)
INVALID_FIELD_IN_PARAM_LIST = (0x26, 0x00)
INVALID_RELEASE_OF_PR = (0x26, 0x04)
TOO_MANY_TARGET_DESCRIPTORS = (0x26, 0x06)
UNSUPPORTED_TARGET_DESCRIPTOR_TYPE = (0x26, 0x07)
TOO_MANY_SEGMENT_DESCRIPTORS = (0x26, 0x08)
UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE = (0x26, 0x09)
WRITE_PROTECTED = (0x27, 0x00)
SOFTWARE_WRITE_PROTECTED = (0x27, 0x02)
SPACE_ALLOC_FAILED_WRITE_PROTECT = (0x27, 0x07)
MEDIUM_MAY_HAVE_CHANGED = (0x28, 0x00)
POWER_ON_RESET = (0x29, 0x00)
POWER_ON_OCCURRED = (0x29, 0x01)
BUS_DEVICE_RESET = (0x29, 0x03)
I_T_NEXUS_LOSS = (0x29, 0x07)
MODE_PARAMETERS_CHANGED = (0x2A, 0x01)
RESERVATIONS_PREEMPTED = (0x2A, 0x03)
RESERVATIONS_RELEASED = (0x2A, 0x04)
REGISTRATIONS_PREEMPTED = (0x2A, 0x05)
CAPACITY_DATA_CHANGED = (0x2A, 0x09)
SAVING_PARAMS_NOT_SUPPORTED = (0x39, 0x00)
MEDIUM_NOT_PRESENT = (0x3A, 0x00)
REPORTED_LUNS_DATA_CHANGED = (0x3F, 0x0E)
INTERNAL_TARGET_FAILURE = (0x44, 0x00)
MEDIUM_REMOVAL_PREVENTED = (0x53, 0x02)
UNREACHABLE_COPY_TARGET = (0x08, 0x04)
COPY_TARGET_DEVICE_NOT_REACHABLE = (0x0D, 0x02)

FIXED_SENSE_LEN = 18
_CURRENT = 0x70
_VALID = 0x80
_SKSV = 0x80
_CD = 0x40  # field pointer points into the CDB (1) or the parameter list (0)
_BPV = 0x08


class ScsiError(Exception):
    """A command ends in CHECK CONDITION with this sense (SPC-4 4.5.3).

    ``field`` is the byte the error points at (SPC-4 4.5.2.4.2), with ``bit``
    (0-7) when one bit is at fault; ``in_cdb`` says whether ``field`` indexes
    the CDB (True) or the parameter data (False). ``info`` fills the
    INFORMATION field (the miscompare offset, for instance).
    """

    def __init__(self, key: int, asc: int, ascq: int, *, info: int | None = None,
                 field: int | None = None, bit: int | None = None,
                 in_cdb: bool = True) -> None:
        super().__init__(f"sense {key:x}/{asc:02x}/{ascq:02x}")
        self.key = key
        self.asc = asc
        self.ascq = ascq
        self.info = info
        self.field = field
        self.bit = bit
        self.in_cdb = in_cdb

    def sense(self) -> bytes:
        return fixed_sense(self.key, self.asc, self.ascq, info=self.info,
                           sks=self.sense_key_specific())

    def sense_key_specific(self) -> bytes | None:
        if self.field is None:
            return None
        b0 = _SKSV | (_CD if self.in_cdb else 0)
        if self.bit is not None:
            b0 |= _BPV | (self.bit & 7)
        return bytes((b0, (self.field >> 8) & 0xFF, self.field & 0xFF))


class ReservationConflict(Exception):
    """The command conflicts with a reservation: status 18h, no sense data."""


def invalid_cdb(field: int | None = None, bit: int | None = None) -> ScsiError:
    """ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at ``field`` (and ``bit``)."""
    return ScsiError(ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB, field=field, bit=bit)


def invalid_param(field: int | None = None, bit: int | None = None) -> ScsiError:
    """ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST at parameter byte ``field``."""
    return ScsiError(ILLEGAL_REQUEST, *INVALID_FIELD_IN_PARAM_LIST, field=field, bit=bit,
                     in_cdb=False)


def lba_out_of_range() -> ScsiError:
    return ScsiError(ILLEGAL_REQUEST, *LBA_OUT_OF_RANGE)


def param_list_length_error() -> ScsiError:
    return ScsiError(ILLEGAL_REQUEST, *PARAMETER_LIST_LENGTH_ERROR)


def fixed_sense(key: int, asc: int, ascq: int, *, info: int | None = None,
                sks: bytes | None = None) -> bytes:
    """Fixed-format sense data, response code 70h (SPC-4 4.5.3, table 44)."""
    buf = bytearray(FIXED_SENSE_LEN)
    buf[0] = _CURRENT
    buf[2] = key & 0x0F
    if info is not None:
        buf[0] |= _VALID
        buf[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")
    buf[7] = FIXED_SENSE_LEN - 8
    buf[12] = asc
    buf[13] = ascq
    if sks is not None:
        buf[15:18] = sks
    return bytes(buf)


def check_condition(err: ScsiError) -> ScsiResult:
    return ScsiResult(status=Status.CHECK_CONDITION, sense=err.sense())


def conflict_result() -> ScsiResult:
    return ScsiResult(status=Status.RESERVATION_CONFLICT)


def parse_fixed_sense(sense: bytes) -> tuple[int, int, int]:
    """(key, asc, ascq) of fixed-format sense; for tests and logging."""
    if len(sense) < 14 or sense[0] & 0x7F not in (0x70, 0x71):
        raise ValueError("not fixed-format sense data")
    return sense[2] & 0x0F, sense[12], sense[13]
