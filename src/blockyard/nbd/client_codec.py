"""Pure decoders for what an NBD server sends (proto.md, "Option reply types",
"Structured reply types", "Block size constraints").

Each decoder takes the payload of one message and returns plain values or an
event; a payload that breaks the spec raises ``ValueError`` with the reason,
which the client core turns into ``RemoteProtocolError``.  Encoding of what
the client sends reuses ``wire`` (``option``, ``info_request``,
``meta_request``, ``REQUEST``), so both cores share one set of layouts.
"""

from __future__ import annotations

from collections.abc import Callable

from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client_events import (
    Buffer,
    ExportInfo,
    InfoBlockSize,
    InfoDescription,
    InfoName,
    InfoUnknown,
    MetaContext,
    ServerEntry,
)

MAX_BLOCK_NO_LIMIT = 0xFFFFFFFF
MAX_MIN_BLOCK = 1 << 16
_EXTENT = wire.EXTENT


def decode_string(raw: Buffer, what: str = "string") -> str:
    """A protocol string: UTF-8, no NUL, at most 4096 bytes (proto.md, "Conventions")."""
    if len(raw) > c.MAX_STRING:
        raise ValueError(f"{what} longer than {c.MAX_STRING} bytes")
    data = bytes(raw)
    if b"\x00" in data:
        raise ValueError(f"{what} contains NUL")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None


def wire_error(err: int) -> int:
    """proto.md "Error values": treat an unexpected error value as EINVAL."""
    return err if err in c.WIRE_ERRNOS else c.EINVAL


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_block_sizes(minimum: int, preferred: int, maximum: int,
                      size: int | None = None) -> str | None:
    """The rules of proto.md "Block size constraints"; the problem or None."""
    if not is_power_of_two(minimum) or minimum > MAX_MIN_BLOCK:
        return f"minimum block size {minimum} is not a power of 2 up to 64 KiB"
    if not is_power_of_two(preferred) or preferred < max(minimum, 512):
        return f"preferred block size {preferred} is not a power of 2 >= max(min, 512)"
    if maximum != MAX_BLOCK_NO_LIMIT and maximum % minimum:
        return f"maximum block size {maximum} is not a multiple of the minimum {minimum}"
    if size is not None and maximum < min(preferred, size):
        return f"maximum block size {maximum} is below min(preferred, export size)"
    return None


# ---- option replies ----------------------------------------------------------------------
def _info_export(option: int, body: bytes) -> ExportInfo:
    if len(body) != 10:  # "length MUST be 12" (including the 2-byte type)
        raise ValueError("NBD_INFO_EXPORT length is not 12")
    size, flags = wire.EXPORT_NAME_REPLY.unpack(body)
    if not flags & c.TransmissionFlag.HAS_FLAGS:
        raise ValueError("transmission flags lack NBD_FLAG_HAS_FLAGS")
    return ExportInfo(option, size, flags)


def _info_name(option: int, body: bytes) -> InfoName:
    return InfoName(option, decode_string(body, "export name"))


def _info_description(option: int, body: bytes) -> InfoDescription:
    return InfoDescription(option, decode_string(body, "export description"))


def _info_block_size(option: int, body: bytes) -> InfoBlockSize:
    if len(body) != 12:  # "length MUST be 14"
        raise ValueError("NBD_INFO_BLOCK_SIZE length is not 14")
    minimum, preferred, maximum = wire.INFO_BLOCK_SIZE.unpack(wire.U16.pack(3) + body)[1:]
    problem = check_block_sizes(minimum, preferred, maximum)
    if problem:
        raise ValueError(problem)
    return InfoBlockSize(option, minimum, preferred, maximum)


_INFO_TABLE: dict[int, Callable[[int, bytes], object]] = {
    c.Info.EXPORT: _info_export,
    c.Info.NAME: _info_name,
    c.Info.DESCRIPTION: _info_description,
    c.Info.BLOCK_SIZE: _info_block_size,
}


def parse_info(option: int, data: bytes) -> object:
    """One NBD_REP_INFO payload: 16-bit type, then the type's fields."""
    if len(data) < 2:
        raise ValueError("NBD_REP_INFO shorter than its type field")
    (info_type,) = wire.U16.unpack_from(data, 0)
    handler = _INFO_TABLE.get(info_type)
    if handler is None:  # "MUST ignore information types that it does not recognize"
        return InfoUnknown(option, info_type, bytes(data[2:]))
    return handler(option, bytes(data[2:]))


def parse_server_entry(data: bytes) -> ServerEntry:
    """NBD_REP_SERVER: 32-bit name length, name, then a description to the end."""
    if len(data) < 4:
        raise ValueError("NBD_REP_SERVER shorter than its name length")
    (n,) = wire.U32.unpack_from(data, 0)
    if n > len(data) - 4:  # "MUST be no larger than the reply packet header length - 4"
        raise ValueError("NBD_REP_SERVER name length exceeds the reply")
    name = decode_string(data[4:4 + n], "export name")
    return ServerEntry(name, decode_string(data[4 + n:], "export description"))


def parse_meta_context(option: int, data: bytes) -> MetaContext:
    """NBD_REP_META_CONTEXT: 32-bit context id, then the context name."""
    if len(data) < 4:
        raise ValueError("NBD_REP_META_CONTEXT shorter than its id")
    (cid,) = wire.U32.unpack_from(data, 0)
    name = decode_string(data[4:], "meta context name")
    if ":" not in name or name.startswith(":"):  # "namespace, colon, leaf-name"
        raise ValueError(f"meta context name {name!r} lacks a namespace")
    return MetaContext(option, cid, name)


def parse_option_error(data: bytes) -> str:
    """Error replies MAY carry a message for humans; be lenient about its bytes."""
    return bytes(data[: c.MAX_STRING]).decode("utf-8", "replace")


# ---- structured reply payloads ----------------------------------------------------------
def parse_error_payload(data: Buffer, trailer: int,
                        exact: bool = True) -> tuple[int, str, bytes]:
    """Error chunk: 32-bit error, 16-bit message length, message, ``trailer`` bytes.

    Returns (error, message, trailer bytes).  proto.md, "Structured reply types":
    the error MUST be nonzero and the message MUST fit within the chunk; a
    known type (``exact``) has nothing after its fields, an unknown error type
    may carry more.
    """
    if len(data) < 6:
        raise ValueError("error chunk shorter than 6 bytes")
    err, mlen = wire.ERROR_CHUNK.unpack_from(data, 0)
    if err == 0:
        raise ValueError("error chunk with error 0")
    if mlen > c.MAX_STRING or 6 + mlen + trailer > len(data):
        raise ValueError("error chunk message length does not fit")
    if exact and 6 + mlen + trailer != len(data):
        raise ValueError("error chunk length disagrees with its fields")
    message = bytes(data[6:6 + mlen]).decode("utf-8", "replace")
    return err, message, bytes(data[6 + mlen:6 + mlen + trailer])


def parse_block_status(data: Buffer) -> tuple[int, list[tuple[int, int]]]:
    """BLOCK_STATUS chunk: context id, then (length, flags) descriptors."""
    if len(data) < 12 or (len(data) - 4) % 8:
        raise ValueError("block status length is not 4 + a positive multiple of 8")
    (cid,) = wire.U32.unpack_from(data, 0)
    extents = list(_EXTENT.iter_unpack(memoryview(data)[4:]))
    if any(length == 0 for length, _ in extents):
        raise ValueError("block status descriptor of length 0")
    return cid, extents
