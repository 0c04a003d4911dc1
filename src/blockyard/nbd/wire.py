"""NBD wire layouts (proto.md, "Protocol phases"), as precompiled structs.

Every multi-byte field is big-endian ("network byte order").  Encoders
return ``bytes``; decoders take any buffer and an offset.
"""

from __future__ import annotations

import struct

from blockyard.nbd import constants as c

GREETING = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
CLIENT_FLAGS = struct.Struct(">I")
OPTION = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY = struct.Struct(">QIII")  # magic, option, reply type, length
EXPORT_NAME_REPLY = struct.Struct(">QH")  # size, transmission flags (+124 zeroes)
INFO_EXPORT = struct.Struct(">HQH")
INFO_BLOCK_SIZE = struct.Struct(">HIII")
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
CHUNK = struct.Struct(">IHHQI")  # magic, flags, type, cookie, length
CHUNK_OFFSET_DATA = struct.Struct(">IHHQIQ")  # chunk header + offset
OFFSET_HOLE = struct.Struct(">QI")
ERROR_CHUNK = struct.Struct(">IH")  # error, message length
EXTENT = struct.Struct(">II")

ZERO_PAD = bytes(124)


def greeting(flags: int) -> bytes:
    return GREETING.pack(c.NBDMAGIC, c.IHAVEOPT, flags)


def option(opt: int, data: bytes = b"") -> bytes:
    return OPTION.pack(c.IHAVEOPT, opt, len(data)) + data


def option_reply(opt: int, rep: int, data: bytes = b"") -> bytes:
    return OPTION_REPLY.pack(c.OPT_REPLY_MAGIC, opt, rep, len(data)) + data


def request(cmd: int, cookie: int, offset: int = 0, length: int = 0, flags: int = 0) -> bytes:
    return REQUEST.pack(c.REQUEST_MAGIC, flags, cmd, cookie, offset, length)


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(c.SIMPLE_REPLY_MAGIC, error, cookie)


def chunk(cookie: int, rtype: int, payload: bytes = b"", flags: int = c.ReplyFlag.DONE) -> bytes:
    return CHUNK.pack(c.STRUCTURED_REPLY_MAGIC, flags, rtype, cookie, len(payload)) + payload


def error_chunk(cookie: int, error: int, message: str = "", offset: int | None = None) -> bytes:
    msg = message.encode()[: c.MAX_STRING]
    body = ERROR_CHUNK.pack(error, len(msg)) + msg
    if offset is None:
        return chunk(cookie, c.ReplyType.ERROR, body)
    return chunk(cookie, c.ReplyType.ERROR_OFFSET, body + offset.to_bytes(8, "big"))


def lp_string(text: str | bytes) -> bytes:
    """A 32-bit length-prefixed string (export names, meta-context queries)."""
    raw = text.encode() if isinstance(text, str) else text
    return U32.pack(len(raw)) + raw


def info_request(name: str, infos: list[int] | tuple[int, ...] = ()) -> bytes:
    """Payload of NBD_OPT_INFO / NBD_OPT_GO."""
    return lp_string(name) + U16.pack(len(infos)) + b"".join(U16.pack(i) for i in infos)


def meta_request(name: str, queries: list[str] | tuple[str, ...] = ()) -> bytes:
    """Payload of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT."""
    return lp_string(name) + U32.pack(len(queries)) + b"".join(lp_string(q) for q in queries)


def parse_lp_strings(data: bytes | memoryview, pos: int, count: int) -> tuple[list[str], int]:
    """Parse ``count`` length-prefixed UTF-8 strings; raise ValueError if malformed."""
    out: list[str] = []
    for _ in range(count):
        if pos + 4 > len(data):
            raise ValueError("truncated string length")
        (n,) = U32.unpack_from(data, pos)
        pos += 4
        if n > c.MAX_STRING or pos + n > len(data):
            raise ValueError("string too long or truncated")
        out.append(bytes(data[pos:pos + n]).decode("utf-8"))
        pos += n
    return out, pos
