"""Sans-IO NBD client core: the client role of fixed newstyle (proto.md,
"Handshake", "Option types", "Option reply types", "Transmission").

Theory of operation
-------------------
The core owns the input buffer and the protocol state; it never touches a
socket or a clock.  Feed it bytes (``receive_data`` or ``get_buffer`` +
``buffer_updated``; ``receive_eof`` at the end), drain ``next_event()``
until it returns ``NEED_DATA``, and send what ``data_to_send()`` returns
(a list of buffers; a WRITE payload is never joined to its header).

States and what moves them::

    GREETING       --18-byte greeting (client flags queued)-->  OPTIONS
    OPTIONS        --an option method-->                        OPTION_WAIT
    OPTION_WAIT    --final reply (ACK or error)-->              OPTIONS
    OPTION_WAIT    --ACK to GO / reply to EXPORT_NAME-->        TRANSMISSION
    OPTION_WAIT    --ACK to ABORT-->                            DISCONNECTING
    TRANSMISSION   --disconnect() (NBD_CMD_DISC)-->             DISCONNECTING
    DISCONNECTING  --end of input, nothing in flight-->         CLOSED
    any            --the server breaks the protocol-->          CLOSED (RemoteProtocolError)

Only one option may be outstanding ("The client MUST NOT send any option
until it has received a final reply"), so option methods raise
``LocalProtocolError`` outside OPTIONS, as do requests outside
TRANSMISSION.  Option replies are checked against the pending option (its
number, the reply types it allows, the payload layout of each type) by
``_NONFINAL`` and ``_ACK_TABLE``; the transmission half lives in
``client_transmission``.

Meta contexts chosen by SET_META_CONTEXT count only if the final SET named
the same export as GO / EXPORT_NAME and ended in ACK ("A client MUST NOT
send NBD_CMD_BLOCK_STATUS unless ... the final time it was sent, it referred
to the same export name"); a failed SET clears them ("replaces all
previously-set metadata contexts (including when this command fails)").

The application's duties the core cannot do: after NBD_REP_ERR_SHUTDOWN or
an NBD_ESHUTDOWN error it MUST disconnect (``abort()`` / ``disconnect()``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

from blockyard.errors import LocalProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client_codec import (
    check_block_sizes,
    parse_info,
    parse_meta_context,
    parse_option_error,
    parse_server_entry,
)
from blockyard.nbd.client_events import (
    Buffer,
    Closed,
    ExportDetails,
    ExportInfo,
    Greeting,
    InfoBlockSize,
    InfoDescription,
    OptionAck,
    OptionError,
    Ready,
)
from blockyard.nbd.client_reader import UnitReader
from blockyard.nbd.client_transmission import Transmission

Opt = c.Opt
Rep = c.Rep
HF = c.HandshakeFlag
CF = c.ClientFlag
OLDSTYLE_MAGIC = 0x00420281861253
MAX_OPTION_REPLY = 1 << 20  # no defined reply comes near this


class ClientState(Enum):
    GREETING = "greeting"
    OPTIONS = "options"
    OPTION_WAIT = "option-wait"
    TRANSMISSION = "transmission"
    DISCONNECTING = "disconnecting"
    CLOSED = "closed"


class ClientConnection(Transmission, UnitReader):
    """One NBD connection, client side; see the module docstring."""

    def __init__(self, *, no_zeroes: bool = True) -> None:
        UnitReader.__init__(self)
        self._init_transmission()
        self.state = ClientState.GREETING
        self.export: ExportDetails | None = None
        self.handshake_flags = 0
        self.fixed_newstyle = False
        self.no_zeroes = False
        self.structured = False
        self._want_no_zeroes = no_zeroes
        self._out: list[Buffer] = []
        self._opt = 0
        self._opt_name = ""
        self._rep = 0
        self._infos: dict[type, object] = {}
        self._meta_new: dict[int, str] = {}
        self._meta: dict[int, str] = {}
        self._meta_name: str | None = None
        self._expect(18, self._greeting)

    # ---- output --------------------------------------------------------------------------
    def data_to_send(self) -> list[Buffer]:
        out, self._out = self._out, []
        return out

    # ---- greeting --------------------------------------------------------------------------
    def _greeting(self, data: bytes | bytearray) -> None:
        magic, second, flags = wire.GREETING.unpack(data)
        if magic != c.NBDMAGIC:
            raise self._fail(f"bad greeting magic {magic:#x}")
        if second == OLDSTYLE_MAGIC:
            raise self._fail("oldstyle negotiation is not supported")
        if second != c.IHAVEOPT:
            raise self._fail(f"bad newstyle magic {second:#x}")
        self.handshake_flags = flags  # unknown bits: "The client SHOULD ignore"
        self.fixed_newstyle = bool(flags & HF.FIXED_NEWSTYLE)
        # "NBD_FLAG_C_NO_ZEROES ... MUST NOT be set if the server did not set NBD_FLAG_NO_ZEROES"
        self.no_zeroes = self._want_no_zeroes and bool(flags & HF.NO_ZEROES)
        cflags = (CF.FIXED_NEWSTYLE if self.fixed_newstyle else 0) | (
            CF.NO_ZEROES if self.no_zeroes else 0)
        self._out.append(wire.CLIENT_FLAGS.pack(cflags))
        self._idle()
        self._events.append(Greeting(flags, self.fixed_newstyle, self.no_zeroes))

    def _idle(self) -> None:
        self.state = ClientState.OPTIONS
        self._expect(1, self._unexpected)  # the server speaks only when asked

    # ---- options: sending --------------------------------------------------------------------
    def _send_option(self, opt: int, data: bytes = b"", name: str = "") -> None:
        if self.state is not ClientState.OPTIONS:
            raise LocalProtocolError(f"cannot send an option in state {self.state.value}")
        if not self.fixed_newstyle and opt != Opt.EXPORT_NAME:
            raise LocalProtocolError("the server is not fixed newstyle: EXPORT_NAME only")
        self._out.append(wire.option(opt, data))
        self._opt, self._opt_name = opt, name
        self._infos, self._meta_new = {}, {}
        self.state = ClientState.OPTION_WAIT
        if opt == Opt.EXPORT_NAME:
            self._expect(10 if self.no_zeroes else 134, self._export_name_reply)
        else:
            self._expect(20, self._opt_reply_header)

    def export_name(self, name: str) -> None:
        """NBD_OPT_EXPORT_NAME: ends negotiation; a refusal is a closed connection."""
        raw = name.encode()
        if len(raw) > c.MAX_STRING:
            raise LocalProtocolError("export name longer than 4096 bytes")
        self._send_option(Opt.EXPORT_NAME, raw, name)

    def go(self, name: str, infos: Sequence[int] = (c.Info.BLOCK_SIZE,)) -> None:
        """NBD_OPT_GO; by default asks for (and so promises to honour) block sizes."""
        self._send_option(Opt.GO, _info_payload(name, infos), name)

    def info(self, name: str, infos: Sequence[int] = (c.Info.BLOCK_SIZE,)) -> None:
        self._send_option(Opt.INFO, _info_payload(name, infos), name)

    def list_exports(self) -> None:
        self._send_option(Opt.LIST)

    def abort(self) -> None:
        self._send_option(Opt.ABORT)

    def structured_reply(self) -> None:
        self._send_option(Opt.STRUCTURED_REPLY)

    def list_meta_context(self, name: str, queries: Sequence[str] = ()) -> None:
        self._send_option(Opt.LIST_META_CONTEXT, _meta_payload(name, queries), name)

    def set_meta_context(self, name: str, queries: Sequence[str]) -> None:
        if not self.structured:  # proto.md: "MUST NOT be requested unless structured replies"
            raise LocalProtocolError("SET_META_CONTEXT needs structured replies first")
        self._send_option(Opt.SET_META_CONTEXT, _meta_payload(name, queries), name)

    def send_option(self, opt: int, data: bytes = b"") -> None:
        """Any option with raw data (unknown options, malformed payloads in tests).

        Replies are interpreted by option number; options that end
        negotiation have methods of their own.
        """
        if opt in (Opt.EXPORT_NAME, Opt.GO, Opt.ABORT):
            raise LocalProtocolError("use export_name(), go() or abort()")
        self._send_option(opt, data)

    # ---- options: replies ------------------------------------------------------------------------
    def _opt_reply_header(self, data: bytes | bytearray) -> None:
        magic, opt, rep, length = wire.OPTION_REPLY.unpack(data)
        if magic != c.OPT_REPLY_MAGIC:
            raise self._fail(f"bad option reply magic {magic:#x}")
        if opt != self._opt:
            raise self._fail(f"reply to option {opt} while {self._opt} is pending")
        if length > MAX_OPTION_REPLY:
            raise self._fail(f"option reply of {length} bytes")
        self._rep = rep
        self._expect(length, self._opt_reply_body)

    def _opt_reply_body(self, data: bytes | bytearray) -> None:
        rep, opt, raw = self._rep, self._opt, bytes(data)
        if rep & c.REP_ERR_BIT:
            self._option_failed(rep, parse_option_error(raw))
            return
        try:
            if rep == Rep.ACK:
                if raw:
                    raise ValueError("NBD_REP_ACK with data")
                _ACK_TABLE.get(opt, ClientConnection._ack_plain)(self)
                return
            handler = _NONFINAL.get((opt, rep))
            if handler is None:
                raise ValueError(f"reply type {rep:#x} is not valid for option {opt}")
            handler(self, raw)
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        self._expect(20, self._opt_reply_header)

    def _rep_server(self, data: bytes) -> None:
        self._events.append(parse_server_entry(data))

    def _rep_info(self, data: bytes) -> None:
        event = parse_info(self._opt, data)
        self._infos[type(event)] = event
        self._events.append(event)

    def _rep_meta(self, data: bytes) -> None:
        event = parse_meta_context(self._opt, data)
        if self._opt == Opt.SET_META_CONTEXT:
            if event.context_id in self._meta_new:  # "each with a unique metadata context ID"
                raise ValueError(f"meta context id {event.context_id} given twice")
            self._meta_new[event.context_id] = event.name
        self._events.append(event)

    def _option_failed(self, rep: int, message: str) -> None:
        if self._opt == Opt.SET_META_CONTEXT:
            self._meta, self._meta_name = {}, None
        self._finish_option(OptionError(self._opt, rep, message))

    def _finish_option(self, event: object) -> None:
        if self._opt == Opt.ABORT:
            self.state = ClientState.DISCONNECTING
            self._expect(1, self._unexpected)
        else:
            self._idle()
        self._events.append(event)

    def _ack_plain(self) -> None:
        self._finish_option(OptionAck(self._opt))

    def _ack_structured(self) -> None:
        self.structured = True
        self._ack_plain()

    def _ack_set_meta(self) -> None:
        self._meta, self._meta_name = dict(self._meta_new), self._opt_name
        self._ack_plain()

    def _ack_info(self) -> None:
        self._details()  # validates what INFO said
        self._ack_plain()

    def _ack_go(self) -> None:
        self._enter_transmission(self._details())

    def _details(self) -> ExportDetails:
        info = self._infos.get(ExportInfo)
        if not isinstance(info, ExportInfo):  # "MUST send NBD_INFO_EXPORT before NBD_REP_ACK"
            raise ValueError("NBD_REP_ACK without NBD_INFO_EXPORT")
        export = self._new_export(info.size, info.flags)
        bs = self._infos.get(InfoBlockSize)
        if isinstance(bs, InfoBlockSize):
            problem = check_block_sizes(bs.minimum, bs.preferred, bs.maximum, info.size)
            if problem:
                raise ValueError(problem)
            export.min_block, export.preferred_block = bs.minimum, bs.preferred
            export.max_block, export.block_size_advertised = bs.maximum, True
        desc = self._infos.get(InfoDescription)
        if isinstance(desc, InfoDescription):
            export.description = desc.description
        return export

    def _new_export(self, size: int, flags: int) -> ExportDetails:
        if not flags & c.TransmissionFlag.HAS_FLAGS:
            raise self._fail("transmission flags lack NBD_FLAG_HAS_FLAGS")
        meta = self._meta if self.structured and self._meta_name == self._opt_name else {}
        return ExportDetails(self._opt_name, size, flags, self.structured,
                             meta_contexts=dict(meta))

    def _export_name_reply(self, data: bytes | bytearray) -> None:
        size, flags = wire.EXPORT_NAME_REPLY.unpack_from(data)
        self._enter_transmission(self._new_export(size, flags))

    def _enter_transmission(self, export: ExportDetails) -> None:
        self.export = export
        self.state = ClientState.TRANSMISSION
        self._expect_reply()
        self._events.append(Ready(self._opt, export))

    # ---- transmission hooks ---------------------------------------------------------------------
    def _can_request(self) -> ExportDetails:
        if self.state is not ClientState.TRANSMISSION or self.export is None:
            raise LocalProtocolError(f"cannot send a request in state {self.state.value}")
        return self.export

    def disconnect(self) -> None:
        """NBD_CMD_DISC; replies to requests still in flight are still parsed."""
        self._can_request()
        self._out.append(wire.request(c.Cmd.DISC, 0))
        self.state = ClientState.DISCONNECTING

    # ---- end of input --------------------------------------------------------------------------
    def _on_eof(self, partial: bool) -> None:
        if partial:
            raise self._fail("connection closed in the middle of a message")
        reason = self._clean_close_reason()
        if reason is None:
            what = f"{self.in_flight} requests in flight" if self.in_flight else \
                f"state {self.state.value}"
            raise self._fail(f"connection closed with {what}")
        self.state = ClientState.CLOSED
        self._dead = True
        self._events.append(Closed(reason))

    def _clean_close_reason(self) -> str | None:
        state, opt = self.state, self._opt
        if state is ClientState.OPTION_WAIT and opt == Opt.ABORT:
            return "closed after NBD_OPT_ABORT"  # "SHOULD gracefully handle" no ACK
        if state is ClientState.OPTION_WAIT and opt == Opt.EXPORT_NAME:
            return "export refused: the server closed the connection after NBD_OPT_EXPORT_NAME"
        if self.in_flight:
            return None
        return {ClientState.OPTIONS: "closed during negotiation",
                ClientState.TRANSMISSION: "closed by the server",
                ClientState.DISCONNECTING: "disconnected"}.get(state)


def _info_payload(name: str, infos: Sequence[int]) -> bytes:
    if len(set(infos)) != len(infos):  # "MUST NOT include any information request" twice
        raise LocalProtocolError("an information request is listed twice")
    return wire.info_request(name, list(infos))


def _meta_payload(name: str, queries: Sequence[str]) -> bytes:
    return wire.meta_request(name, list(queries))


_NONFINAL: dict[tuple[int, int], Callable[[ClientConnection, bytes], None]] = {
    (Opt.LIST, Rep.SERVER): ClientConnection._rep_server,
    (Opt.INFO, Rep.INFO): ClientConnection._rep_info,
    (Opt.GO, Rep.INFO): ClientConnection._rep_info,
    (Opt.LIST_META_CONTEXT, Rep.META_CONTEXT): ClientConnection._rep_meta,
    (Opt.SET_META_CONTEXT, Rep.META_CONTEXT): ClientConnection._rep_meta,
}

_ACK_TABLE: dict[int, Callable[[ClientConnection], None]] = {
    Opt.STRUCTURED_REPLY: ClientConnection._ack_structured,
    Opt.SET_META_CONTEXT: ClientConnection._ack_set_meta,
    Opt.INFO: ClientConnection._ack_info,
    Opt.GO: ClientConnection._ack_go,
}
