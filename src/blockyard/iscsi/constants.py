"""iSCSI numbers: opcodes, flag bits, status codes, reasons (RFC 7143 §11).

Every number that appears on the wire has a name here, so the codec and the
state machines never spell a magic constant.
"""

from __future__ import annotations

from enum import IntEnum

BHS_SIZE = 48
DIGEST_SIZE = 4
RESERVED_TAG = 0xFFFFFFFF  # §11.2.1.8: the reserved Initiator/Target Task Tag
MAX_DATA_SEGMENT = (1 << 24) - 1  # §11.2.1.6: DataSegmentLength is 24 bits
IMMEDIATE_BIT = 0x40  # §11.2.1.1
OPCODE_MASK = 0x3F
FINAL_BIT = 0x80  # §11.2.1.3
ISCSI_VERSION = 0x00  # §11.12.4: Version-max / Version-min


class Opcode(IntEnum):
    """§11.2.1.2: initiator opcodes 0x00-0x1f, target opcodes 0x20-0x3f."""

    NOP_OUT = 0x00
    SCSI_COMMAND = 0x01
    TASK_MGMT_REQUEST = 0x02
    LOGIN_REQUEST = 0x03
    TEXT_REQUEST = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQUEST = 0x06
    SNACK_REQUEST = 0x10
    NOP_IN = 0x20
    SCSI_RESPONSE = 0x21
    TASK_MGMT_RESPONSE = 0x22
    LOGIN_RESPONSE = 0x23
    TEXT_RESPONSE = 0x24
    DATA_IN = 0x25
    LOGOUT_RESPONSE = 0x26
    R2T = 0x31
    ASYNC_MESSAGE = 0x32
    REJECT = 0x3F


# SCSI Command flags, byte 1 (§11.3.1-11.3.3).
CMD_FINAL = 0x80
CMD_READ = 0x40
CMD_WRITE = 0x20
CMD_ATTR_MASK = 0x07

# SCSI Response / Data-In residual flags, byte 1 (§11.4.5, §11.7.5).
RSP_BIDI_OVERFLOW = 0x10
RSP_BIDI_UNDERFLOW = 0x08
RSP_OVERFLOW = 0x04
RSP_UNDERFLOW = 0x02
DATA_IN_ACK = 0x40  # §11.7.2 A bit
DATA_IN_STATUS = 0x01  # §11.7.4 S bit

# Login flags, byte 1 (§11.12.1-11.12.3).
LOGIN_TRANSIT = 0x80
LOGIN_CONTINUE = 0x40
TEXT_CONTINUE = 0x40  # §11.10.2

# AHS types (§11.2.2.1).
AHS_EXTENDED_CDB = 1
AHS_BIDI_READ_LENGTH = 2


class Stage(IntEnum):
    """Login stages, the CSG/NSG field values (§11.12.3)."""

    SECURITY = 0
    OPERATIONAL = 1
    FULL_FEATURE = 3


class LoginStatus(IntEnum):
    """Status-Class << 8 | Status-Detail (§11.13.5)."""

    SUCCESS = 0x0000
    TARGET_MOVED_TEMPORARILY = 0x0101
    TARGET_MOVED_PERMANENTLY = 0x0102
    INITIATOR_ERROR = 0x0200
    AUTHENTICATION_FAILURE = 0x0201
    AUTHORIZATION_FAILURE = 0x0202
    NOT_FOUND = 0x0203
    TARGET_REMOVED = 0x0204
    UNSUPPORTED_VERSION = 0x0205
    TOO_MANY_CONNECTIONS = 0x0206
    MISSING_PARAMETER = 0x0207
    CANT_INCLUDE_IN_SESSION = 0x0208
    SESSION_TYPE_NOT_SUPPORTED = 0x0209
    SESSION_DOES_NOT_EXIST = 0x020A
    INVALID_DURING_LOGIN = 0x020B
    TARGET_ERROR = 0x0300
    SERVICE_UNAVAILABLE = 0x0301
    OUT_OF_RESOURCES = 0x0302


class RejectReason(IntEnum):
    """Reason codes of the Reject PDU (§11.17.1)."""

    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    COMMAND_NOT_SUPPORTED = 0x05
    IMMEDIATE_COMMAND_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    LONG_OPERATION_REJECT = 0x0A
    NEGOTIATION_RESET = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


class TmfResponse(IntEnum):
    """Task Management Function Response codes (§11.6.1)."""

    FUNCTION_COMPLETE = 0
    TASK_DOES_NOT_EXIST = 1
    LUN_DOES_NOT_EXIST = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGNMENT_NOT_SUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


class LogoutReason(IntEnum):
    """Logout Request reason codes (§11.14.1)."""

    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_FOR_RECOVERY = 2


class LogoutResponseCode(IntEnum):
    """Logout Response codes (§11.15.1)."""

    SUCCESS = 0
    CID_NOT_FOUND = 1
    RECOVERY_NOT_SUPPORTED = 2
    CLEANUP_FAILED = 3


class AsyncEvent(IntEnum):
    """Asynchronous Message events (§11.9.1)."""

    SCSI_EVENT = 0
    LOGOUT_REQUESTED = 1
    CONNECTION_DROP = 2
    SESSION_DROP = 3
    RENEGOTIATE = 4


class ResponseCode(IntEnum):
    """The iSCSI Response field of a SCSI Response (§11.4.3)."""

    COMMAND_COMPLETED = 0x00
    TARGET_FAILURE = 0x01
