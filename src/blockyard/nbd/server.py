"""Sans-IO NBD server core (fixed newstyle only; proto.md "Handshake" and
"Transmission").

Theory of operation
-------------------
The core owns the input buffer and the protocol state; it never touches a
socket or a clock.  The transport feeds bytes either by copying them in with
``receive_data(data)`` or, zero-copy, by receiving straight into the buffer
that ``get_buffer()`` hands out and then calling ``buffer_updated(n)``.  Then
it calls ``next_event()`` until it returns ``NEED_DATA`` and sends whatever
``data_to_send()`` returns.

States and what moves them::

    CLIENT_FLAGS  --4 bytes of client flags-->                    OPTIONS
    OPTIONS       --option needing the application-->             WAIT_APP
    WAIT_APP      --accept_export / reject_export / send_list-->  OPTIONS
    WAIT_APP      --accept_export for GO or EXPORT_NAME-->        TRANSMISSION
    OPTIONS       --ABORT-->                                      CLOSED
    TRANSMISSION  --DISC-->                                       CLOSED
    any           --protocol violation (RemoteProtocolError)-->   CLOSED

In OPTIONS the core answers every option itself (the option table below)
except those that need to know exports: EXPORT_NAME, INFO, GO and the two
META_CONTEXT options raise ``ExportQuery`` and LIST raises ``ListQuery``.
The client must wait for the final reply to an option before sending the
next (proto.md, "Option haggling"), so the core parses nothing while it
waits for the application.

In TRANSMISSION each request header (and a WRITE's payload) becomes a
``Request`` event after validation against the negotiated export; a request
that fails validation gets its error reply queued and produces no event.
Replies to valid requests are the application's, built with ``replies``.
Payloads of 64 KiB and more are received into a buffer of their own (no
copy on the zero-copy path); smaller ones are copied out of the input
buffer once.  That half is the ``ServerTransmission`` mixin
(``server_transmission``); the handshake and options are here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from enum import Enum

from blockyard.errors import LocalProtocolError, RemoteProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.events import (
    NEED_DATA,
    Disconnect,
    ExportQuery,
    ExportSpec,
    ListQuery,
    Negotiated,
)
from blockyard.nbd.inbuf import InputBuffer
from blockyard.nbd.server_transmission import ServerTransmission

CONTEXT_IDS = {c.BASE_ALLOCATION: 1}

Opt = c.Opt
Rep = c.Rep
_C_FIXED = int(c.ClientFlag.FIXED_NEWSTYLE)
_C_NO_ZEROES = int(c.ClientFlag.NO_ZEROES)
TF = c.TransmissionFlag


class State(Enum):
    CLIENT_FLAGS = "client-flags"
    OPTIONS = "options"
    WAIT_APP = "wait-app"
    TRANSMISSION = "transmission"
    CLOSED = "closed"


class ServerConnection(ServerTransmission):
    """One NBD connection, server side; see the module docstring."""

    def __init__(self, *, handshake_flags: int = c.HandshakeFlag.FIXED_NEWSTYLE
                 | c.HandshakeFlag.NO_ZEROES) -> None:
        self.state = State.CLIENT_FLAGS
        self.negotiated = Negotiated()
        self._handshake_flags = handshake_flags
        InputBuffer.__init__(self)
        self._pending: tuple[int, int, int, int, int] | None = None  # header awaiting payload
        self._skip = 0  # bytes to discard (oversized option or write)
        self._after_skip: bytes | None = None  # reply to queue once skipped
        self._out: list[bytes] = [wire.greeting(handshake_flags)]
        self._query: ExportQuery | None = None
        self._query_infos: list[int] = []
        self._query_meta: list[str] = []
        self._meta_export: str | None = None
        self._meta_selected: dict[int, str] = {}
        # Where big WRITE payloads are received; the application may recycle buffers.
        self.alloc_payload: Callable[[int], bytearray] = bytearray

    # ---- output -----------------------------------------------------------------
    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def _reply(self, opt: int, rep: int, data: bytes = b"") -> None:
        self._out.append(wire.option_reply(opt, rep, data))

    def _error(self, opt: int, rep: int, message: str = "") -> None:
        self._reply(opt, rep, message.encode()[: c.MAX_STRING])

    # ---- events -------------------------------------------------------------------
    def next_event(self) -> object:
        if self.state is State.TRANSMISSION:
            return self._next_request()
        if self._skip and not self._do_skip():
            return NEED_DATA
        if self.state is State.OPTIONS:
            return self._next_option()
        if self.state is State.CLIENT_FLAGS:
            return self._client_flags()
        if self.state is State.WAIT_APP:
            return NEED_DATA
        raise LocalProtocolError("connection is closed")

    def _do_skip(self) -> bool:
        n = min(self._skip, self._end - self._start)
        self._start += n
        self._skip -= n
        if self._skip:
            return False
        if self._after_skip is not None:
            self._out.append(self._after_skip)
            self._after_skip = None
        return True

    def _fail(self, message: str) -> RemoteProtocolError:
        self.state = State.CLOSED
        return RemoteProtocolError(message)

    def _disconnect(self, reason: str) -> Disconnect:
        self.state = State.CLOSED
        return Disconnect(reason)

    def _client_flags(self) -> object:
        raw = self._take(4)
        if raw is None:
            return NEED_DATA
        (flags,) = wire.CLIENT_FLAGS.unpack(raw)
        # proto.md "Client flags": a flag the server did not advertise (or does not
        # know) means the server MUST close; fixed newstyle is all we speak.
        if flags & ~int(self._handshake_flags) or not flags & _C_FIXED:
            raise self._fail(f"unsupported client flags {flags:#x}")
        self.negotiated.no_zeroes = bool(flags & _C_NO_ZEROES)
        self.state = State.OPTIONS
        return self.next_event()

    def _next_option(self) -> object:
        while self.state is State.OPTIONS:
            if self._end - self._start < 16:
                return NEED_DATA
            magic, opt, length = wire.OPTION.unpack_from(self._buf, self._start)
            if magic != c.IHAVEOPT:
                raise self._fail(f"bad option magic {magic:#x}")
            if length > c.MAX_OPTION_DATA:
                if opt == Opt.EXPORT_NAME:
                    raise self._fail("export name too long")
                self._start += 16
                self._skip = length
                self._after_skip = wire.option_reply(opt, Rep.ERR_TOO_BIG, b"option too large")
                if not self._do_skip():
                    return NEED_DATA
                continue
            if self._end - self._start < 16 + length:
                return NEED_DATA
            self._start += 16
            data = self._take(length) or b""
            event = self._dispatch_option(opt, data)
            if event is not None:
                return event
        return self.next_event()

    def _dispatch_option(self, opt: int, data: bytes) -> object | None:
        handler = _OPTION_TABLE.get(opt)
        if handler is None:  # proto.md: unknown options get ERR_UNSUP, haggling goes on
            self._error(opt, Rep.ERR_UNSUP, f"option {opt} not supported")
            return None
        return handler(self, opt, data)

    # ---- option handlers (one per option, dispatched by _OPTION_TABLE) ------------------
    def _opt_export_name(self, opt: int, data: bytes) -> object:
        try:
            name = data.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("export name is not UTF-8") from None
        return self._ask(ExportQuery(opt, name, go=True))

    def _opt_abort(self, opt: int, data: bytes) -> object:
        self._reply(opt, Rep.ACK)
        return self._disconnect("client sent NBD_OPT_ABORT")

    def _opt_list(self, opt: int, data: bytes) -> object | None:
        if data:
            self._error(opt, Rep.ERR_INVALID, "NBD_OPT_LIST takes no data")
            return None
        self.state = State.WAIT_APP
        self._query = None
        return ListQuery()

    def _opt_structured(self, opt: int, data: bytes) -> None:
        if data:
            self._error(opt, Rep.ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data")
        elif self.negotiated.structured:
            self._error(opt, Rep.ERR_INVALID, "structured replies already negotiated")
        else:
            self.negotiated.structured = True
            self._reply(opt, Rep.ACK)

    def _opt_info_go(self, opt: int, data: bytes) -> object | None:
        try:
            (name,), pos = wire.parse_lp_strings(data, 0, 1)
            (count,) = wire.U16.unpack_from(data, pos)
            if pos + 2 + 2 * count != len(data):
                raise ValueError("information request count disagrees with length")
            self._query_infos = [wire.U16.unpack_from(data, pos + 2 + 2 * i)[0]
                                 for i in range(count)]
        except (ValueError, UnicodeDecodeError, struct.error) as exc:
            self._error(opt, Rep.ERR_INVALID, f"malformed request: {exc}")
            return None
        return self._ask(ExportQuery(opt, name, go=opt == Opt.GO))

    def _opt_meta(self, opt: int, data: bytes) -> object | None:
        if opt == Opt.SET_META_CONTEXT:
            # proto.md: SET replaces the selection "including when this command fails"
            self._meta_selected = {}
            self._meta_export = None
            if not self.negotiated.structured:  # SET needs structured replies first
                self._error(opt, Rep.ERR_INVALID, "negotiate structured replies first")
                return None
        try:
            (name,), pos = wire.parse_lp_strings(data, 0, 1)
            (count,) = wire.U32.unpack_from(data, pos)
            queries, end = wire.parse_lp_strings(data, pos + 4, count)
            if end != len(data):
                raise ValueError("trailing bytes")
        except (ValueError, UnicodeDecodeError, IndexError, struct.error) as exc:
            self._error(opt, Rep.ERR_INVALID, f"malformed request: {exc}")
            return None
        self._query_meta = queries
        return self._ask(ExportQuery(opt, name, go=False))

    def _opt_starttls(self, opt: int, data: bytes) -> None:
        self._error(opt, Rep.ERR_UNSUP, "TLS is not configured on this server")

    def _ask(self, query: ExportQuery) -> ExportQuery:
        self._query = query
        self.state = State.WAIT_APP
        return query

    # ---- the application's answers ---------------------------------------------------------
    def _take_query(self) -> ExportQuery:
        if self.state is not State.WAIT_APP or self._query is None:
            raise LocalProtocolError("no export query is pending")
        query, self._query = self._query, None
        self.state = State.OPTIONS
        return query

    def accept_export(self, spec: ExportSpec) -> None:
        q = self._take_query()
        if q.option in (Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT):
            self._answer_meta(q)
            return
        flags = int(spec.flags) | TF.HAS_FLAGS
        flags = flags | TF.SEND_DF if self.negotiated.structured else flags & ~TF.SEND_DF
        if q.option == Opt.EXPORT_NAME:
            reply = wire.EXPORT_NAME_REPLY.pack(spec.size, flags)
            self._out.append(reply if self.negotiated.no_zeroes else reply + wire.ZERO_PAD)
        else:
            self._send_infos(q.option, spec, flags)
        if q.go:
            if self._meta_export != q.name:  # contexts were set for another export
                self._meta_selected = {}
            self.negotiated.meta_contexts = dict(self._meta_selected)
            self.negotiated.export = spec
            self.state = State.TRANSMISSION

    def _send_infos(self, opt: int, spec: ExportSpec, flags: int) -> None:
        self._reply(opt, Rep.INFO, wire.INFO_EXPORT.pack(c.Info.EXPORT, spec.size, flags))
        wanted = set(self._query_infos)
        if c.Info.NAME in wanted:
            self._reply(opt, Rep.INFO, wire.U16.pack(c.Info.NAME) + spec.name.encode())
        if c.Info.DESCRIPTION in wanted and spec.description:
            text = spec.description.encode()[: c.MAX_STRING]
            self._reply(opt, Rep.INFO, wire.U16.pack(c.Info.DESCRIPTION) + text)
        self._reply(opt, Rep.INFO, wire.INFO_BLOCK_SIZE.pack(
            c.Info.BLOCK_SIZE, spec.min_block, spec.preferred_block, spec.max_block))
        self._reply(opt, Rep.ACK)

    def _answer_meta(self, q: ExportQuery) -> None:
        matches = _match_contexts(self._query_meta, listing=q.option == Opt.LIST_META_CONTEXT)
        for name in matches:
            cid = CONTEXT_IDS[name] if q.option == Opt.SET_META_CONTEXT else 0
            self._reply(q.option, Rep.META_CONTEXT, wire.U32.pack(cid) + name.encode())
        if q.option == Opt.SET_META_CONTEXT:
            self._meta_export = q.name
            self._meta_selected = {CONTEXT_IDS[n]: n for n in matches}
        self._reply(q.option, Rep.ACK)

    def reject_export(self, rep: int, message: str = "") -> None:
        """Refuse the queried export (ERR_UNKNOWN, ERR_POLICY, ...)."""
        q = self._take_query()
        if q.option == Opt.EXPORT_NAME:  # no way to say why: proto.md says close
            self.state = State.CLOSED
            return
        self._error(q.option, rep, message)

    def send_list(self, exports: list[tuple[str, str]]) -> None:
        if self.state is not State.WAIT_APP or self._query is not None:
            raise LocalProtocolError("no list query is pending")
        for name, description in exports:
            self._reply(Opt.LIST, Rep.SERVER, wire.lp_string(name) + description.encode())
        self._reply(Opt.LIST, Rep.ACK)
        self.state = State.OPTIONS


def _match_contexts(queries: list[str], listing: bool) -> list[str]:
    """Which of our contexts the queries select (proto.md, "Metadata querying")."""
    if not queries:
        return list(CONTEXT_IDS) if listing else []
    out: list[str] = []
    for q in queries:
        for name in CONTEXT_IDS:
            if (q == name or (listing and q == name.split(":")[0] + ":")) and name not in out:
                out.append(name)
    return out


_OPTION_TABLE: dict[int, Callable[[ServerConnection, int, bytes], object | None]] = {
    Opt.EXPORT_NAME: ServerConnection._opt_export_name,
    Opt.ABORT: ServerConnection._opt_abort,
    Opt.LIST: ServerConnection._opt_list,
    Opt.STARTTLS: ServerConnection._opt_starttls,
    Opt.INFO: ServerConnection._opt_info_go,
    Opt.GO: ServerConnection._opt_info_go,
    Opt.STRUCTURED_REPLY: ServerConnection._opt_structured,
    Opt.LIST_META_CONTEXT: ServerConnection._opt_meta,
    Opt.SET_META_CONTEXT: ServerConnection._opt_meta,
}
