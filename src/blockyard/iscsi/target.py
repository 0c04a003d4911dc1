"""The sans-IO iSCSI target connection (RFC 7143), one TCP connection = one session.

Theory of operation.  The transport feeds received bytes with
``receive_data`` (or ``get_buffer``/``buffer_updated``) and calls
``next_event`` until it returns ``NEED_DATA``; every PDU is handled inside
``next_event``.  What we send accumulates in a list of buffers that
``data_to_send`` hands over (payloads are never joined).  The transport
answers events: ``CommandReady`` -> ``complete_command``, ``TaskManagement``
-> ``complete_tmf``, ``SessionClosing`` -> flush and close.  Time enters
only through ``get_timer``/``handle_timer(now)`` (NOP-In pings).

The connection state machine is the table ``_DISPATCH``, keyed by
(state, opcode)::

    state          PDU                 handler              next state
    LOGIN          Login Request       _on_login            LOGIN, FULL_FEATURE or CLOSED
    LOGIN          anything else       _invalid_in_login    CLOSED (0x020b, §6.3)
    FULL_FEATURE   SCSI Command        datapath             FULL_FEATURE
    FULL_FEATURE   Data-Out            datapath             FULL_FEATURE (CLOSED on an
                                                            unknown TTT)
    FULL_FEATURE   NOP-Out, Text, TMF  control              FULL_FEATURE
    FULL_FEATURE   Logout Request      control.on_logout    LOGGED_OUT
    FULL_FEATURE   SNACK / other       Reject 0x05 / 0x04   FULL_FEATURE
    LOGGED_OUT     anything            ignored              LOGGED_OUT
    CLOSED         -                   nothing more happens

Numbering: non-immediate PDUs pass the CmdSN window (``cmdsn.py``: outside
it they are dropped without an answer) and are handled in CmdSN order; SCSI
tasks are delivered to the transport in CmdSN order once their Data-Out is
complete (``tasks.py``), immediate ones as soon as they are complete.
StatSN counts every status-bearing PDU of the connection (§4.2.2.2).  A
recoverable peer error is answered with a Reject (§11.17) and the PDU's
CmdSN is still consumed; an unrecoverable one raises RemoteProtocolError
from ``next_event`` and the transport closes the connection (ErrorRecovery-
Level 0 knows no other recovery).  The SCSI data path is ``datapath.py``.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from blockyard.errors import LocalProtocolError, RemoteProtocolError
from blockyard.iscsi import control, datapath
from blockyard.iscsi.cmdsn import CommandWindow
from blockyard.iscsi.constants import (
    RESERVED_TAG,
    AsyncEvent,
    LoginStatus,
    Opcode,
    RejectReason,
)
from blockyard.iscsi.digest import digest_bytes, padding_for
from blockyard.iscsi.events import NEED_DATA, LoginComplete, SessionClosing
from blockyard.iscsi.framing import PduReader, PduRejected
from blockyard.iscsi.keys import Params
from blockyard.iscsi.login import TargetLogin
from blockyard.iscsi.pdu import Buffer, Pdu
from blockyard.iscsi.pdu_initiator import DataOut, LoginRequest
from blockyard.iscsi.pdu_target import (
    AsyncMessage,
    LoginResponse,
    Reject,
)
from blockyard.iscsi.session import PortalConfig, SessionInfo
from blockyard.iscsi.state import State
from blockyard.iscsi.tasks import (
    ABORTED,
    EXECUTING,
    READY,
    Task,
)
from blockyard.scsi.task import FileSpan, Nexus, ScsiCommand, ScsiResult

Payload = Buffer | FileSpan
_NUMBERED = frozenset({Opcode.NOP_OUT, Opcode.SCSI_COMMAND, Opcode.TASK_MGMT_REQUEST,
                       Opcode.TEXT_REQUEST, Opcode.LOGOUT_REQUEST})


class TargetConnection:
    """One target-side connection; see the module docstring."""

    def __init__(self, portal: PortalConfig, *, local_address: str = "", now: float = 0.0,
                 first_statsn: int | None = None, owner: object | None = None) -> None:
        self.portal = portal
        self.timer_epoch = 0  # changes whenever get_timer's answer may have changed
        self.local_address = local_address
        self.owner = owner if owner is not None else self
        self.state = State.LOGIN  # also selects the row of _DISPATCH (see the setter)
        wanted = portal.preferences[0]
        self.reader = PduReader(max(wanted.max_recv_data_segment, 8192))
        self.login = TargetLogin(portal, self.owner)
        self.session: SessionInfo | None = None
        self.discovery = False
        self.nexus = Nexus("", "")  # set at login
        self.params: Params = self.login.params
        self.window: CommandWindow[Any] = CommandWindow(0, portal.cmd_window)
        self.statsn = secrets.randbits(32) if first_statsn is None else first_statsn
        self.tasks: dict[int, Task] = {}
        self.write_bytes = 0  # Expected Data Transfer Length of the writes we hold
        self.order: deque[Task] = deque()
        self.events: deque[Any] = deque()
        self.out: list[Payload] = []
        self.aborted: set[int] = set()  # ITTs of aborted tasks: their Data-Out is dropped
        self.tmfs: dict[int, control.PendingTmf] = {}
        self.text = control.TextState()
        self.hd = self.dd = False
        self.placed: tuple[int, bytearray, memoryview] | None = None  # see datapath.place
        self.alloc: Callable[[int], bytearray] = bytearray  # write buffers (contents unused)
        # The SCSI layer's answer to a command it can answer at once, or None (nothing
        # started): such commands skip CommandReady (datapath._answered_now).
        self.answer_now: Callable[[ScsiCommand], ScsiResult | None] | None = None
        self.by_reference_min = 0  # reads this large may be answered by reference (no DD)
        self.bulky = False  # answer_now queued a FileSpan or much data (a hint to send it
        # from a thread); the transport resets it
        self._ttt = secrets.randbits(31)
        self._now = now
        self._activity = False
        self._next_ping = 0.0
        self._ping: tuple[int, float, float] | None = None  # (TTT, sent at, deadline)

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, value: State) -> None:
        self._state = value
        self.timer_epoch += 1
        self._row = _ROWS[value]  # opcode -> handler, looked up once per PDU
        self._default = _DEFAULT[value]

    # ---- input and events -------------------------------------------------------
    def receive_data(self, data: Buffer) -> None:
        self.reader.feed(data)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.reader.buffer_updated(nbytes)

    def next_event(self) -> Any:
        """The next event, or NEED_DATA.  A fatal peer error raises RemoteProtocolError."""
        events = self.events
        while not events:
            if self._state is State.CLOSED:
                return NEED_DATA
            try:
                pdu = self.reader.next_pdu()
                if pdu is None:
                    return NEED_DATA
                self._activity = True
                handler = self._row.get(pdu.OPCODE, self._default)
                handler(self, pdu)
            except PduRejected as exc:
                self._skip_cmdsn(exc.header)
                self.reject(exc.code, exc.header)
                if type(exc.pdu) is DataOut:
                    datapath.bad_data_out(self, exc.pdu)
            except RemoteProtocolError as exc:
                if exc.fatal:
                    self._fail()
                    raise
                self._skip_cmdsn(self.reader.last_header)
                self.reject(exc.code, self.reader.last_header)
        return events.popleft()

    def _skip_cmdsn(self, header: bytes) -> None:
        """A rejected numbered PDU still uses its CmdSN, or the window would stall."""
        if len(header) >= 28 and header[0] & 0x3F in _NUMBERED and not header[0] & 0x40:
            ready = self.window.fill(int.from_bytes(header[24:28], "big"))
            if ready:
                self.in_order(ready)

    def data_to_send(self) -> list[Payload]:
        out, self.out = self.out, []
        return out

    def connection_lost(self) -> None:
        """The transport lost the socket: the session ends (ErrorRecoveryLevel 0)."""
        self._fail()

    def _fail(self) -> None:
        self.state = State.CLOSED
        self.portal.registry.close(self.owner)

    # ---- output helpers -----------------------------------------------------------
    def emit(self, header: bytes, data: Payload = b"") -> None:
        """Queue one PDU: header (+digest), data, padding (+digest).  ``data`` is a
        FileSpan only without data digests (``ScsiCommand.by_reference``)."""
        out = self.out
        if self.hd:
            header += digest_bytes(header)
        out.append(header)
        n = len(data)
        if n:
            out.append(data)
            if n & 3:
                out.append(padding_for(n))
            if self.dd:
                assert not isinstance(data, FileSpan)
                out.append(digest_bytes(data, padding_for(n)))

    def emit_pdu(self, pdu: Pdu) -> None:
        self.emit(pdu.encode_header(), pdu.data)

    def next_statsn(self) -> int:
        sn = self.statsn
        self.statsn = (sn + 1) & 0xFFFFFFFF
        return sn

    def new_ttt(self) -> int:
        self._ttt = (self._ttt + 1) & 0x7FFFFFFF
        return self._ttt

    def reject(self, reason: int, header: bytes) -> None:
        """§11.17: a Reject carrying the offending header."""
        w = self.window
        self.emit_pdu(Reject(reason, RESERVED_TAG, self.next_statsn(), w.exp_cmdsn,
                             w.max_cmdsn, 0, header[:48]))

    # ---- login ----------------------------------------------------------------------
    def _on_login(self, req: LoginRequest) -> None:
        if self.login.first is None:
            self.window = CommandWindow(req.cmdsn, self.portal.cmd_window)
        rsp = self.login.handle(req)
        self._send_login_response(rsp)
        if self.login.failed is not None:
            self.state = State.CLOSED
            self.events.append(SessionClosing(f"login failed: 0x{self.login.failed:04x}"))
        elif self.login.result is not None:
            self._enter_full_feature(self.login.result)

    def _send_login_response(self, rsp: LoginResponse) -> None:
        rsp.statsn = self.next_statsn()
        rsp.exp_cmdsn, rsp.max_cmdsn = self.window.exp_cmdsn, self.window.max_cmdsn
        self.emit_pdu(rsp)

    def _enter_full_feature(self, session: SessionInfo) -> None:
        self.session = session
        self.nexus = session.nexus
        self.discovery = session.discovery
        p = self.params
        self.hd = self.reader.header_digest = p.header_digest == "CRC32C"
        self.dd = self.reader.data_digest = p.data_digest == "CRC32C"
        self.reader.max_data_segment = p.max_recv_data_segment
        if not session.discovery:  # large write data straight into the task's buffer
            self.reader.sink = self._place
        self.state = State.FULL_FEATURE
        self._next_ping = self._now + self.portal.nop_interval
        self._activity = False  # the login itself is counted by _next_ping
        self.events.append(LoginComplete(session, self.login.replaced))

    def _place(self, cls: type[Pdu], fields: tuple[Any, ...], length: int) -> memoryview | None:
        return datapath.place(self, cls, fields, length)

    def _invalid_in_login(self, pdu: Pdu) -> None:
        rsp = LoginResponse(status=LoginStatus.INVALID_DURING_LOGIN, itt=pdu.itt)
        self._send_login_response(rsp)
        self.state = State.CLOSED
        raise RemoteProtocolError(f"{type(pdu).__name__} during login",
                                  LoginStatus.INVALID_DURING_LOGIN)

    # ---- CmdSN order ----------------------------------------------------------------------
    def in_order(self, items: list[Any]) -> None:
        """Items whose CmdSN turn has come: tasks queue for delivery, others run now."""
        if len(items) == 1 and not self.order:
            item = items[0]
            if type(item) is Task and item.state == READY:
                datapath.deliver(self, item)  # the usual case: nothing waits before it
                return
        for item in items:
            if type(item) is Task:
                self.order.append(item)
            else:
                handler, pdu = item
                handler(self, pdu)
        self.pump()

    def pump(self) -> None:
        order = self.order
        while order:
            head = order[0]
            if head.state == ABORTED:
                order.popleft()
            elif head.state == READY:
                order.popleft()
                datapath.deliver(self, head)
            else:
                break

    # ---- results --------------------------------------------------------------------
    def drop_task(self, task: Task) -> None:
        del self.tasks[task.itt]
        if task.write:
            self.write_bytes -= task.edtl

    def complete_command(self, itt: int, result: ScsiResult) -> None:
        """The SCSI layer finished the task ``itt``: send its Data-In and status."""
        task = self.tasks.get(itt)
        if task is None or task.state not in (EXECUTING, ABORTED):
            if self._state is not State.FULL_FEATURE:
                return  # the session ended while the command ran
            raise LocalProtocolError(f"complete_command for unknown task 0x{itt:08x}")
        del self.tasks[itt]  # drop_task
        if task.write:
            self.write_bytes -= task.edtl
        if task.state == ABORTED:
            control.aborted_task_done(self, task)
            return
        if self._state is State.FULL_FEATURE:
            datapath.send_result(self, task, result)

    # ---- timers ------------------------------------------------------------------------
    def get_timer(self) -> float | None:
        """When ``handle_timer`` wants to run next (NOP-In ping and its timeout)."""
        if self._state is not State.FULL_FEATURE or self.portal.nop_interval <= 0:
            return None
        return self._ping[2] if self._ping is not None else self._next_ping

    def handle_timer(self, now: float) -> None:
        self._now = now
        self.timer_epoch += 1
        if self.state is State.FULL_FEATURE:
            control.nop_timer(self, now)

    def answer_ping(self, ttt: int) -> None:
        if self._ping is not None and self._ping[0] == ttt:
            self._next_ping = self._ping[1] + self.portal.nop_interval
            self._ping = None
            self.timer_epoch += 1

    def complete_tmf(self, itt: int, response: int) -> None:
        """The SCSI layer has done its part of the TMF ``itt``: send the response."""
        control.complete_tmf(self, itt, response)

    def request_logout(self, seconds: int) -> None:
        """Ask the initiator to log out within ``seconds`` (Async Message event 1, §11.9)."""
        if self.state is State.FULL_FEATURE:
            w = self.window
            self.emit_pdu(AsyncMessage(0, RESERVED_TAG, self.next_statsn(), w.exp_cmdsn,
                                       w.max_cmdsn, AsyncEvent.LOGOUT_REQUESTED, 0, 0, 0,
                                       seconds))

    def abort_tasks(self, lun: int | None = None) -> None:
        """Drop this session's tasks (all, or one LUN's) without responses: another
        session's LUN or target reset reached the task set (SAM, TAS=0)."""
        control.abort_matching(self, lambda t: lun is None or t.lun == lun, None)


def _ignore(conn: TargetConnection, pdu: Pdu) -> None:
    return None


def _not_supported(conn: TargetConnection, pdu: Pdu) -> None:
    raise RemoteProtocolError(f"{type(pdu).__name__} not supported",
                              RejectReason.COMMAND_NOT_SUPPORTED, fatal=False)


def _protocol_error(conn: TargetConnection, pdu: Pdu) -> None:
    raise RemoteProtocolError(f"unexpected {type(pdu).__name__}", RejectReason.PROTOCOL_ERROR,
                              fatal=False)


_FF = State.FULL_FEATURE
_DISPATCH: dict[tuple[State, int], Callable[[TargetConnection, Any], None]] = {
    (State.LOGIN, Opcode.LOGIN_REQUEST): TargetConnection._on_login,
    (_FF, Opcode.SCSI_COMMAND): datapath.on_scsi_command,
    (_FF, Opcode.DATA_OUT): datapath.on_data_out,
    (_FF, Opcode.NOP_OUT): control.on_nop_pdu,
    (_FF, Opcode.TEXT_REQUEST): control.numbered(control.on_text),
    (_FF, Opcode.TASK_MGMT_REQUEST): control.numbered(control.on_tmf),
    (_FF, Opcode.LOGOUT_REQUEST): control.numbered(control.on_logout),
    (_FF, Opcode.SNACK_REQUEST): _not_supported,  # ErrorRecoveryLevel 0 (§11.16)
}
_DEFAULT: dict[State, Callable[[TargetConnection, Any], None]] = {
    State.LOGIN: TargetConnection._invalid_in_login,
    State.FULL_FEATURE: _protocol_error,
    State.LOGGED_OUT: _ignore,
    State.CLOSED: _ignore,
}
_ROWS: dict[State, dict[int, Callable[[TargetConnection, Any], None]]] = {
    state: {int(op): h for (st, op), h in _DISPATCH.items() if st is state} for state in State}
