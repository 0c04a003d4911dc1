"""The sans-IO iSCSI initiator connection (RFC 7143), one TCP connection of a session.

Theory of operation.  The transport feeds received bytes with
``receive_data(data, now)`` (or ``get_buffer``/``buffer_updated(n, now)``)
and calls ``next_event`` until it returns ``NEED_DATA``; every PDU is
handled inside ``next_event``.  What we send accumulates as a list of
buffers that ``data_to_send`` hands over (payloads are never joined).  Time
enters only as ``now`` arguments and through ``get_timer``/``handle_timer``.

The connection state machine is the table ``_DISPATCH``, keyed by
(state, opcode)::

    state          PDU                   handler                  next state
    LOGIN          Login Response        _on_login                LOGIN, FULL_FEATURE, CLOSED
    FULL_FEATURE   Data-In, SCSI Resp.   _on_data_in/_on_response FULL_FEATURE
    FULL_FEATURE   R2T                   _on_r2t (Data-Out)       FULL_FEATURE
    FULL_FEATURE   NOP-In, TMF/Text rsp, control                  FULL_FEATURE
                   Reject, Async Message
    LOGGING_OUT    the same, and
                   Logout Response       control.on_logout        CLOSED (LoggedOut)
    any other (state, PDU)               _unexpected              CLOSED (ConnectionFailed)

Numbering (§4.2.2.1): commands wait in ``queue`` until their CmdSN fits the
window (CmdSN <= MaxCmdSN); every target PDU may move ExpCmdSN / MaxCmdSN
forward (serial arithmetic), never back.  Immediate PDUs (NOP-Out, TMF,
Text, Logout) carry the current CmdSN without consuming it.  ExpStatSN
follows every status-bearing PDU (§4.2.2.2).  At ErrorRecoveryLevel 0 any
protocol error, a header digest error or a dead peer ends the connection
(``ConnectionFailed``); the session then reconnects and reissues the
commands whose status never came (``unfinished``).  NOP, timeouts, TMF,
Text, Async Messages and Logout are in ``initiator_control.py``.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from collections import deque
from collections.abc import Callable
from typing import Any

from blockyard.errors import LocalProtocolError, RemoteProtocolError
from blockyard.iscsi import initiator_control as control
from blockyard.iscsi.constants import RESERVED_TAG, Opcode
from blockyard.iscsi.digest import padding_for
from blockyard.iscsi.framing import PduRejected, frame
from blockyard.iscsi.initiator_command import (
    Command,
    answer_r2t,
    command_pdus,
    take_data_in,
    take_response,
)
from blockyard.iscsi.initiator_config import InitiatorSettings
from blockyard.iscsi.initiator_events import (
    NEED_DATA,
    CommandDone,
    ConnectionFailed,
    InitiatorState,
    LoginDone,
    LoginFailed,
    LoginRedirected,
)
from blockyard.iscsi.initiator_login import (
    InitiatorLogin,
    LoginError,
    LoginRedirect,
    LoginResult,
)
from blockyard.iscsi.initiator_reader import InitiatorReader
from blockyard.iscsi.keys import Params
from blockyard.iscsi.pdu import Buffer, Pdu
from blockyard.iscsi.pdu_initiator import LoginRequest
from blockyard.iscsi.pdu_target import R2T, DataIn, LoginResponse, ScsiResponse
from blockyard.iscsi.serial import HALF, MASK, sn_diff

S = InitiatorState
LOGIN_SEGMENT = 8192  # §13.12: what either side may send during login


class InitiatorConnection:
    """One initiator-side connection; see the module docstring."""

    def __init__(self, settings: InitiatorSettings, isid: int, *, now: float = 0.0,
                 tsih: int = 0, cid: int = 0, cmdsn: int | None = None,
                 token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.settings = settings
        self.isid, self.cid = isid, cid
        self.state = S.LOGIN
        self.reader = InitiatorReader(max(settings.max_recv_data_segment, LOGIN_SEGMENT),
                                      self._place)
        self.cmdsn = secrets.randbits(32) if cmdsn is None else cmdsn
        self.exp_cmdsn = self.max_cmdsn = self.cmdsn
        self.exp_statsn = 0
        self.login = InitiatorLogin(settings, isid, tsih, cid, self.cmdsn, 0, token_bytes)
        self.result: LoginResult | None = None
        self.params = Params()
        self.hd = self.dd = False
        self.tasks: dict[int, Command] = {}
        self.queue: deque[Command] = deque()
        self.deadlines: list[tuple[float, int, Command]] = []
        self.ctl = control.ControlState()
        self.events: deque[Any] = deque()
        self.out: list[Buffer] = []
        self.now = self.last_rx = now
        self._itt = itertools.count(1)
        self.send_pdu(self.login.start())

    # ---- input and events -----------------------------------------------------------
    def receive_data(self, data: Buffer, now: float) -> None:
        self.reader.feed(data)
        self.now = self.last_rx = now

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int, now: float) -> None:
        self.reader.buffer_updated(nbytes)
        self.now = self.last_rx = now

    def next_event(self) -> Any:
        events = self.events
        while not events:
            if self.state is S.CLOSED:
                return NEED_DATA
            try:
                pdu = self.reader.next_pdu()
                if pdu is None:
                    return NEED_DATA
                _DISPATCH.get((self.state, pdu.OPCODE), InitiatorConnection._unexpected)(
                    self, pdu)
            except PduRejected as exc:  # a data digest error: ERL 0 drops the connection
                self.fail(f"{exc} in a {Opcode(exc.header[0] & 0x3F).name} PDU")
            except RemoteProtocolError as exc:
                self.fail(f"protocol error: {exc}")
        return events.popleft()

    def data_to_send(self) -> list[Buffer]:
        out, self.out = self.out, []
        return out

    def fail(self, reason: str, time2wait: float | None = None) -> None:
        """End the connection; the session will reconnect and reissue (``unfinished``)."""
        if self.state is not S.CLOSED:
            self.state = S.CLOSED
            self.events.append(ConnectionFailed(reason, time2wait or self.ctl.time2wait))

    def connection_lost(self, reason: str = "connection closed by the target") -> None:
        self.fail(reason)

    def unfinished(self) -> list[Command]:
        """Commands submitted here whose status never came, in submission order."""
        pending = [c for c in itertools.chain(self.tasks.values(), self.queue) if not c.done]
        self.tasks.clear()
        self.queue.clear()
        return sorted(pending, key=lambda c: c.seq)

    # ---- output -----------------------------------------------------------------------
    def emit(self, header: bytes, data: Buffer = b"") -> None:
        if self.hd or self.dd:
            self.out.extend(frame(header, data, self.hd, self.dd))
            return
        out = self.out
        out.append(header)
        n = len(data)
        if n:
            out.append(data)
            if n & 3:
                out.append(padding_for(n))

    def send_pdu(self, pdu: Pdu) -> None:
        self.emit(pdu.encode_header(), pdu.data)

    def new_itt(self) -> int:
        itt = next(self._itt) & 0x7FFFFFFF
        return itt if itt not in self.tasks else self.new_itt()

    # ---- numbering -------------------------------------------------------------------
    def update_window(self, exp_cmdsn: int, max_cmdsn: int) -> None:
        """§4.2.2.1: ignore a MaxCmdSN below ExpCmdSN - 1; move both only forward."""
        # serial arithmetic inline (a < b  <=>  0 < (b - a) mod 2**32 < 2**31): every PDU
        # from the target comes through here
        if 0 < (exp_cmdsn - 1 - max_cmdsn) & MASK < HALF:  # MaxCmdSN < ExpCmdSN - 1
            return
        if 0 < (exp_cmdsn - self.exp_cmdsn) & MASK < HALF:
            self.exp_cmdsn = exp_cmdsn
        if 0 < (max_cmdsn - self.max_cmdsn) & MASK < HALF:
            self.max_cmdsn = max_cmdsn
            if self.queue:
                self.pump()

    def advance_statsn(self, statsn: int) -> None:
        if (statsn - self.exp_statsn) & MASK < HALF:
            self.exp_statsn = (statsn + 1) & MASK

    @property
    def window_open(self) -> int:
        """How many more non-immediate commands the target will take now."""
        return max(0, sn_diff(self.cmdsn, self.max_cmdsn) + 1)

    # ---- login ------------------------------------------------------------------------
    def _on_login(self, rsp: LoginResponse) -> None:
        try:
            outcome = self.login.receive(rsp)
        except LoginError as exc:
            self.state = S.CLOSED
            self.events.append(LoginFailed(exc))
            return
        if isinstance(outcome, LoginRequest):
            self.send_pdu(outcome)
        elif isinstance(outcome, LoginRedirect):
            self.state = S.CLOSED
            self.events.append(LoginRedirected(outcome))
        else:
            self._full_feature(outcome)

    def _full_feature(self, result: LoginResult) -> None:
        self.result = result
        self.params = p = result.params
        self.exp_statsn = result.exp_statsn
        self.exp_cmdsn = self.max_cmdsn = self.cmdsn
        self.update_window(result.exp_cmdsn, result.max_cmdsn)
        self.hd = self.reader.header_digest = p.header_digest == "CRC32C"
        self.dd = self.reader.data_digest = p.data_digest == "CRC32C"
        self.reader.max_data_segment = p.max_recv_data_segment
        self.state = S.FULL_FEATURE
        self.events.append(LoginDone(result))
        self.pump()

    # ---- commands -----------------------------------------------------------------------
    def submit(self, cmd: Command, now: float) -> None:
        """Queue ``cmd``; it goes out as soon as login is done and the window allows."""
        if self.state in (S.CLOSED, S.LOGGING_OUT):
            raise LocalProtocolError(f"submit on a {self.state.value} connection")
        if self.settings.discovery:
            raise LocalProtocolError("SCSI commands in a discovery session")
        self.now = now
        cmd.reset()
        cmd.attempts += 1
        timeout = self.settings.command_timeout if cmd.timeout is None else cmd.timeout
        cmd.deadline = now + timeout if timeout > 0 else 0.0
        if cmd.deadline:
            heapq.heappush(self.deadlines, (cmd.deadline, id(cmd), cmd))
        self.queue.append(cmd)
        if self.state is S.FULL_FEATURE:
            self.pump()

    def pump(self) -> None:
        """Send queued commands while the CmdSN window is open (§4.2.2.1)."""
        queue = self.queue
        if not queue or self.ctl.draining:
            return
        params, tasks = self.params, self.tasks
        plain = not (self.hd or self.dd)
        out = self.out
        while queue and (self.max_cmdsn - self.cmdsn) & MASK < HALF:  # CmdSN <= MaxCmdSN
            cmd = queue.popleft()
            cmd.itt = itt = self.new_itt()
            cmd.cmdsn = self.cmdsn
            self.cmdsn = (self.cmdsn + 1) & MASK
            tasks[itt] = cmd
            pdus = command_pdus(cmd, self.exp_statsn, params)
            if plain and len(pdus) == 1 and not pdus[0][1]:
                out.append(pdus[0][0])  # a command without data (a read): the header alone
                continue
            for header, data in pdus:
                self.emit(header, data)

    def complete(self, cmd: Command) -> None:
        self.tasks.pop(cmd.itt, None)
        cmd.done = True
        self.events.append(CommandDone(cmd))
        if self.ctl.draining and not self.tasks:
            control.drained(self)

    def _task(self, itt: int, what: str) -> Command:
        cmd = self.tasks.get(itt)
        if cmd is None:
            raise RemoteProtocolError(f"{what} for unknown task 0x{itt:08x}")
        return cmd

    def _place(self, pdu: DataIn, length: int) -> memoryview | None:
        """Where a Data-In payload still arriving goes (``initiator_reader``), if sane."""
        cmd = self.tasks.get(pdu.itt)
        if cmd is None or cmd.buffer is None or pdu.datasn != cmd.next_datasn or \
                pdu.offset + length > cmd.read_len:
            return None  # the normal path copies it and raises what is wrong
        return memoryview(cmd.buffer)[pdu.offset:pdu.offset + length]

    def _on_data_in(self, pdu: DataIn) -> None:
        self.update_window(pdu.exp_cmdsn, pdu.max_cmdsn)
        cmd = self._task(pdu.itt, "Data-In")
        if take_data_in(cmd, pdu, pdu is self.reader.placed):
            self.advance_statsn(pdu.statsn)
            self.complete(cmd)

    def _on_response(self, rsp: ScsiResponse) -> None:
        self.advance_statsn(rsp.statsn)
        self.update_window(rsp.exp_cmdsn, rsp.max_cmdsn)
        cmd = self._task(rsp.itt, "SCSI Response")
        take_response(cmd, rsp)
        self.complete(cmd)

    def _on_r2t(self, r2t: R2T) -> None:
        self.update_window(r2t.exp_cmdsn, r2t.max_cmdsn)
        cmd = self._task(r2t.itt, "R2T")
        if cmd.aborting != RESERVED_TAG:
            return  # §11.5.1: an aborted task's R2Ts are not answered
        for header, data in answer_r2t(cmd, r2t, self.exp_statsn,
                                       self.params.peer_max_recv_data_segment):
            self.emit(header, data)

    def _unexpected(self, pdu: Pdu) -> None:
        raise RemoteProtocolError(f"unexpected {type(pdu).__name__} in state "
                                  f"{self.state.value}")

    # ---- timers and control (initiator_control.py) ------------------------------------------
    def get_timer(self) -> float | None:
        return control.get_timer(self)

    def handle_timer(self, now: float) -> None:
        self.now = now
        control.handle_timer(self, now)

    def abort(self, cmd: Command) -> int:
        """Send ABORT TASK for ``cmd``; its CommandDone follows the TMF response."""
        return control.abort_task(self, cmd, "aborted")

    def send_targets(self, value: str = "All") -> int:
        return control.send_text(self, [("SendTargets", value)])

    def logout(self) -> None:
        control.logout(self)


_FF, _LO = S.FULL_FEATURE, S.LOGGING_OUT
_DISPATCH: dict[tuple[S, int], Callable[[InitiatorConnection, Any], None]] = {
    (S.LOGIN, Opcode.LOGIN_RESPONSE): InitiatorConnection._on_login,
}
for _state in (_FF, _LO):
    _DISPATCH.update({
        (_state, Opcode.DATA_IN): InitiatorConnection._on_data_in,
        (_state, Opcode.SCSI_RESPONSE): InitiatorConnection._on_response,
        (_state, Opcode.R2T): InitiatorConnection._on_r2t,
        (_state, Opcode.NOP_IN): control.on_nop_in,
        (_state, Opcode.TASK_MGMT_RESPONSE): control.on_tmf_response,
        (_state, Opcode.TEXT_RESPONSE): control.on_text_response,
        (_state, Opcode.REJECT): control.on_reject,
        (_state, Opcode.ASYNC_MESSAGE): control.on_async,
        (_state, Opcode.LOGOUT_RESPONSE): control.on_logout_response,
    })
