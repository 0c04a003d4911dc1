"""NBD protocol numbers (NetworkBlockDevice/nbd doc/proto.md).

Only the fixed-newstyle handshake is implemented; oldstyle numbers are kept
for recognising and refusing them.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
EXTENDED_REQUEST_MAGIC = 0x21E41C71

MAX_STRING = 4096  # "strings ... MUST NOT exceed 4096 bytes" (proto.md, Option types)
MAX_OPTION_DATA = 64 << 10  # our cap on one option's payload


class HandshakeFlag(IntFlag):
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlag(IntFlag):
    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class TransmissionFlag(IntFlag):
    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11
    BLOCK_STAT_PAYLOAD = 1 << 12


class Opt(IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


REP_ERR_BIT = 1 << 31


class Rep(IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = REP_ERR_BIT | 1
    ERR_POLICY = REP_ERR_BIT | 2
    ERR_INVALID = REP_ERR_BIT | 3
    ERR_PLATFORM = REP_ERR_BIT | 4
    ERR_TLS_REQD = REP_ERR_BIT | 5
    ERR_UNKNOWN = REP_ERR_BIT | 6
    ERR_SHUTDOWN = REP_ERR_BIT | 7
    ERR_BLOCK_SIZE_REQD = REP_ERR_BIT | 8
    ERR_TOO_BIG = REP_ERR_BIT | 9
    ERR_EXT_HEADER_REQD = REP_ERR_BIT | 10


class Info(IntEnum):
    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class Cmd(IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7
    RESIZE = 8


class CmdFlag(IntFlag):
    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4
    PAYLOAD_LEN = 1 << 5


class ReplyFlag(IntFlag):
    DONE = 1 << 0


class ReplyType(IntEnum):
    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = (1 << 15) | 1
    ERROR_OFFSET = (1 << 15) | 2


# Errors on the wire (proto.md "Error values"); Linux errno numbers coincide.
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

WIRE_ERRNOS = frozenset({EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN})


def wire_errno(err: int) -> int:
    """Map a host errno to one the protocol allows (unknown ones become EINVAL)."""
    if err in WIRE_ERRNOS:
        return err
    if err in (27, 122):  # EFBIG, EDQUOT
        return ENOSPC
    if err == 30:  # EROFS
        return EPERM
    if err == 38:  # ENOSYS
        return ENOTSUP
    return EIO if err else EINVAL


BASE_ALLOCATION = "base:allocation"
STATE_HOLE = 1
STATE_ZERO = 2
