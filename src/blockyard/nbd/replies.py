"""Transmission-phase reply encoders (proto.md, "Simple reply message" and
"Structured reply chunk message").

Hot path: each returns a short list of buffers for ``transport.writelines``
so a read payload is never copied into a joined reply.
"""

from __future__ import annotations

from collections.abc import Sequence

from blockyard.nbd import constants as c
from blockyard.nbd import wire

Buffer = bytes | bytearray | memoryview

_SIMPLE = wire.SIMPLE_REPLY.pack
_DATA_HDR = wire.CHUNK_OFFSET_DATA.pack
_SRM = c.SIMPLE_REPLY_MAGIC
_STM = c.STRUCTURED_REPLY_MAGIC
_DONE = int(c.ReplyFlag.DONE)
_OFFSET_DATA = int(c.ReplyType.OFFSET_DATA)
_MAX_EXTENTS = 1 << 17  # descriptors per reply: keeps one reply under 1 MiB


def ok(cookie: int) -> bytes:
    return _SIMPLE(_SRM, 0, cookie)


def read_simple(cookie: int, data: Buffer) -> list[Buffer]:
    return [_SIMPLE(_SRM, 0, cookie), data]


def read_structured(cookie: int, offset: int, data: Buffer) -> list[Buffer]:
    """One OFFSET_DATA chunk carrying the whole read (so DF is always honoured)."""
    if not data:
        return [wire.chunk(cookie, c.ReplyType.NONE)]
    return [_DATA_HDR(_STM, _DONE, _OFFSET_DATA, cookie, 8 + len(data), offset), data]


def read_sparse(cookie: int, pieces: Sequence[tuple[int, Buffer | int]]) -> list[Buffer]:
    """Several chunks: ``(offset, data)`` for data, ``(offset, n)`` for an n-byte hole."""
    out: list[Buffer] = []
    last = len(pieces) - 1
    for i, (offset, item) in enumerate(pieces):
        flags = _DONE if i == last else 0
        if isinstance(item, int):
            out.append(wire.chunk(cookie, c.ReplyType.OFFSET_HOLE,
                                  wire.OFFSET_HOLE.pack(offset, item), flags))
        else:
            out.append(_DATA_HDR(_STM, flags, _OFFSET_DATA, cookie, 8 + len(item), offset))
            out.append(item)
    return out


def error(cookie: int, err: int, structured: bool, message: str = "") -> bytes:
    """An error reply; structured clients get an ERROR chunk with a message."""
    err = c.wire_errno(err)
    if structured:
        return wire.error_chunk(cookie, err, message)
    return _SIMPLE(_SRM, err, cookie)


def block_status(cookie: int, context_id: int, extents: Sequence[tuple[int, int]]) -> bytes:
    """One BLOCK_STATUS chunk for one meta context: (length, flags) descriptors."""
    extents = extents[:_MAX_EXTENTS]
    body = bytearray(wire.U32.pack(context_id))
    pack = wire.EXTENT.pack
    for length, flags in extents:
        body += pack(length, flags)
    return wire.chunk(cookie, c.ReplyType.BLOCK_STATUS, bytes(body))
