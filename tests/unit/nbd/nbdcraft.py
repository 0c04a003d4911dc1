"""Hand-made server bytes for testing the client core alone.

``ready_client(...)`` walks a ``ClientConnection`` through a handshake whose
replies are crafted here (so the test decides sizes, flags, block sizes and
meta-context ids), and ``feed(client, data)`` returns the events the bytes
produce.
"""

from __future__ import annotations

from nbdpair import ALL_FLAGS, drain

from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client import ClientConnection
from blockyard.nbd.client_events import Ready

Opt, Rep, TF = c.Opt, c.Rep, c.TransmissionFlag
SIZE = 1 << 20


def feed(client: ClientConnection, *parts: bytes) -> list[object]:
    client.receive_data(b"".join(parts))
    return drain(client)


def greeted(flags: int = 3, no_zeroes: bool = True) -> ClientConnection:
    client = ClientConnection(no_zeroes=no_zeroes)
    feed(client, wire.greeting(flags))
    client.data_to_send()
    return client


def info_export(size: int = SIZE, flags: int = ALL_FLAGS | TF.HAS_FLAGS) -> bytes:
    return wire.option_reply(Opt.GO, Rep.INFO, wire.INFO_EXPORT.pack(c.Info.EXPORT, size, flags))


def info_block_size(minimum: int = 1, preferred: int = 4096, maximum: int = 32 << 20,
                    opt: int = Opt.GO) -> bytes:
    return wire.option_reply(opt, Rep.INFO, wire.INFO_BLOCK_SIZE.pack(
        c.Info.BLOCK_SIZE, minimum, preferred, maximum))


def meta_reply(cid: int, name: str, opt: int = Opt.SET_META_CONTEXT) -> bytes:
    return wire.option_reply(opt, Rep.META_CONTEXT, wire.U32.pack(cid) + name.encode())


def ready_client(structured: bool = True, *, flags: int = ALL_FLAGS, size: int = SIZE,
                 meta: dict[int, str] | None = None, min_block: int = 1,
                 max_block: int = 32 << 20) -> ClientConnection:
    """A client in transmission, after replies this module made up."""
    client = greeted()
    if structured:
        client.structured_reply()
        feed(client, wire.option_reply(Opt.STRUCTURED_REPLY, Rep.ACK))
        flags |= TF.SEND_DF
    if meta:
        client.set_meta_context("disk", list(meta.values()))
        feed(client, *[meta_reply(cid, name) for cid, name in meta.items()],
             wire.option_reply(Opt.SET_META_CONTEXT, Rep.ACK))
    client.go("disk")
    preferred = max(4096, min_block)
    events = feed(client, info_export(size, flags | TF.HAS_FLAGS),
                  info_block_size(min_block, preferred, max_block),
                  wire.option_reply(Opt.GO, Rep.ACK))
    assert isinstance(events[-1], Ready), events
    client.data_to_send()
    return client


def chunk(cookie: int, rtype: int, payload: bytes = b"", flags: int = 1) -> bytes:
    return wire.chunk(cookie, rtype, payload, flags)


def data_chunk(cookie: int, offset: int, data: bytes, flags: int = 1) -> bytes:
    return chunk(cookie, c.ReplyType.OFFSET_DATA, offset.to_bytes(8, "big") + data, flags)


def hole_chunk(cookie: int, offset: int, length: int, flags: int = 1) -> bytes:
    return chunk(cookie, c.ReplyType.OFFSET_HOLE, wire.OFFSET_HOLE.pack(offset, length), flags)


def status_chunk(cookie: int, cid: int, extents: list[tuple[int, int]], flags: int = 1) -> bytes:
    body = wire.U32.pack(cid) + b"".join(wire.EXTENT.pack(n, f) for n, f in extents)
    return chunk(cookie, c.ReplyType.BLOCK_STATUS, body, flags)


def error_chunk(cookie: int, err: int, message: bytes = b"", offset: int | None = None,
                flags: int = 1, rtype: int | None = None) -> bytes:
    body = wire.ERROR_CHUNK.pack(err, len(message)) + message
    if offset is not None:
        body += offset.to_bytes(8, "big")
    if rtype is None:
        rtype = c.ReplyType.ERROR if offset is None else c.ReplyType.ERROR_OFFSET
    return chunk(cookie, rtype, body, flags)


def none_chunk(cookie: int) -> bytes:
    return chunk(cookie, c.ReplyType.NONE)
