"""How each NBD command other than READ runs against a block layer.

One coroutine per command, dispatched by ``COMMAND_TABLE``; each returns the
reply buffers.  ``export_flags`` derives the transmission flags from the
layer's capabilities, so the flags tell the truth about what the stack does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from blockyard.block.layer import Layer
from blockyard.nbd import constants as c
from blockyard.nbd import replies
from blockyard.nbd.events import Request

TF = c.TransmissionFlag
F = c.CmdFlag


def export_flags(layer: Layer, read_only: bool) -> int:
    flags = TF.HAS_FLAGS | TF.SEND_DF | TF.SEND_CACHE
    writable = not (read_only or layer.read_only)
    if not writable:
        flags |= TF.READ_ONLY
    if layer.can_flush:
        flags |= TF.SEND_FLUSH
    if layer.can_fua and writable:
        flags |= TF.SEND_FUA
    if writable:
        flags |= TF.SEND_WRITE_ZEROES
        if layer.can_trim:
            flags |= TF.SEND_TRIM
        if layer.can_fast_zero:
            flags |= TF.SEND_FAST_ZERO
    if layer.can_multi_conn:
        flags |= TF.CAN_MULTI_CONN
    return int(flags)


async def _write(conn: Any, layer: Layer, req: Request) -> Any:
    assert req.payload is not None
    await layer.pwrite(req.offset, req.payload, bool(req.flags & F.FUA))
    return replies.ok(req.cookie)


async def _flush(conn: Any, layer: Layer, req: Request) -> Any:
    await layer.flush()
    return replies.ok(req.cookie)


async def _trim(conn: Any, layer: Layer, req: Request) -> Any:
    await layer.trim(req.offset, req.length, bool(req.flags & F.FUA))
    return replies.ok(req.cookie)


async def _cache(conn: Any, layer: Layer, req: Request) -> Any:
    await layer.cache(req.offset, req.length)
    return replies.ok(req.cookie)


async def _write_zeroes(conn: Any, layer: Layer, req: Request) -> Any:
    await layer.zero(req.offset, req.length, may_trim=not req.flags & F.NO_HOLE,
                     fast=bool(req.flags & F.FAST_ZERO), fua=bool(req.flags & F.FUA))
    return replies.ok(req.cookie)


async def _block_status(conn: Any, layer: Layer, req: Request) -> Any:
    extents = await layer.extents(req.offset, req.length)
    if req.flags & F.REQ_ONE:
        extents = extents[:1]
    out = [replies.block_status(req.cookie, cid, extents)
           for cid in conn.core.negotiated.meta_contexts]
    if len(out) == 1:
        return out[0]
    for i, chunk in enumerate(out[:-1]):  # only the last chunk carries DONE
        out[i] = chunk[:4] + b"\x00\x00" + chunk[6:]
    return out


COMMAND_TABLE: dict[int, Callable[[Any, Layer, Request], Awaitable[Any]]] = {
    c.Cmd.WRITE: _write,
    c.Cmd.FLUSH: _flush,
    c.Cmd.TRIM: _trim,
    c.Cmd.CACHE: _cache,
    c.Cmd.WRITE_ZEROES: _write_zeroes,
    c.Cmd.BLOCK_STATUS: _block_status,
}
