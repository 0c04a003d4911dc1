"""Full-feature control of the initiator: NOP, timeouts, TMF, Text, Reject, Async, Logout.

Theory of operation.  These handlers are rows of ``initiator._DISPATCH``
plus the timer.  Every received PDU proves the peer alive (``last_rx``).

* Keepalive and dead-peer detection (§11.18/§11.19): after
  ``nop_interval`` seconds without a PDU we send a NOP-Out ping (valid ITT,
  immediate); if nothing at all arrives for ``nop_timeout`` seconds after
  the ping, the connection is dead.  A target ping (NOP-In with a valid
  TTT) is answered by a NOP-Out echoing its TTT, ITT 0xffffffff.
* Per-command timeout: a queued command past its deadline fails at once; a
  sent one gets an ABORT TASK (§11.5.1, immediate, RefCmdSN = its CmdSN)
  and fails ("timed out") when the TMF response comes -- which the target
  sends only after the task has ended, so no Data-In for it can follow.  An
  unanswered TMF (``tmf_timeout``) drops the connection.
* Text (§11.10/§11.11): SendTargets and friends; a response with the C bit
  or without F is pulled on with an empty request echoing the TTT.
* Reject (§11.17): of a SCSI command -> that command fails; a data digest
  error (the target discarded our data) drops the connection so that the
  session reissues; of a Text request -> the text exchange fails.
* Async Message (§11.9.1): 1 (logout requested) and 4 (renegotiate): stop
  sending, let the tasks drain (at most Parameter3 seconds), log out; the
  session reconnects.  2 / 3 (the target will drop the connection /
  session): remember Parameter2 as Time2Wait.  0 (SCSI event) and vendor
  events are only reported.
* Logout (§11.14/§11.15): close the session; the response ends the connection.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from blockyard.iscsi.constants import RESERVED_TAG, AsyncEvent, LogoutReason, RejectReason
from blockyard.iscsi.initiator_events import (
    AsyncReceived,
    CommandDone,
    InitiatorState,
    LoggedOut,
    TextDone,
    TmfDone,
)
from blockyard.iscsi.pdu import encode_lun
from blockyard.iscsi.pdu_initiator import LogoutRequest, NopOut, TaskMgmtRequest, TextRequest
from blockyard.iscsi.pdu_target import (
    AsyncMessage,
    LogoutResponse,
    NopIn,
    Reject,
    TaskMgmtResponse,
    TextResponse,
)
from blockyard.iscsi.textkeys import TextAccumulator, encode_text, parse_text

if TYPE_CHECKING:
    from blockyard.iscsi.initiator import InitiatorConnection
    from blockyard.iscsi.initiator_command import Command

ABORT_TASK = 1  # §11.5.1 function code
S = InitiatorState


@dataclass(slots=True)
class PendingTmf:
    itt: int
    function: int
    command: Command | None
    deadline: float
    why: str


@dataclass(slots=True)
class ControlState:
    ping: tuple[int, float] | None = None  # (ITT, sent at)
    tmfs: dict[int, PendingTmf] = field(default_factory=dict)
    texts: dict[int, TextAccumulator] = field(default_factory=dict)
    draining: bool = False
    drain_deadline: float = 0.0
    time2wait: float | None = None


# ---- timers ------------------------------------------------------------------------------
def get_timer(conn: InitiatorConnection) -> float | None:
    if conn.state not in (S.FULL_FEATURE, S.LOGGING_OUT):
        return None
    s, ctl = conn.settings, conn.ctl
    times: list[float] = []
    if s.nop_interval > 0:
        if ctl.ping is None:
            times.append(conn.last_rx + s.nop_interval)
        else:
            times.append(max(ctl.ping[1], conn.last_rx) + s.nop_timeout)
    _drop_stale(conn)
    if conn.deadlines:
        times.append(conn.deadlines[0][0])
    times += [t.deadline for t in ctl.tmfs.values()]
    if ctl.draining and ctl.drain_deadline:
        times.append(ctl.drain_deadline)
    return min(times) if times else None


def _drop_stale(conn: InitiatorConnection) -> None:
    heap = conn.deadlines
    while heap and (heap[0][2].done or heap[0][2].deadline != heap[0][0]
                    or heap[0][2].aborting != RESERVED_TAG):
        heapq.heappop(heap)


def handle_timer(conn: InitiatorConnection, now: float) -> None:
    if conn.state not in (S.FULL_FEATURE, S.LOGGING_OUT):
        return
    if _nop_timer(conn, now):
        return
    _drop_stale(conn)
    while conn.deadlines and conn.deadlines[0][0] <= now:
        cmd = heapq.heappop(conn.deadlines)[2]
        _command_timed_out(conn, cmd)
        _drop_stale(conn)
    for tmf in list(conn.ctl.tmfs.values()):
        if tmf.deadline <= now:
            conn.fail(f"task management request ({tmf.why}) not answered within "
                      f"{conn.settings.tmf_timeout:g} s")
            return
    ctl = conn.ctl
    if ctl.draining and ctl.drain_deadline and now >= ctl.drain_deadline:
        drained(conn)


def _nop_timer(conn: InitiatorConnection, now: float) -> bool:
    """Ping when idle; True when the peer is found dead."""
    s, ctl = conn.settings, conn.ctl
    if s.nop_interval <= 0:
        return False
    if ctl.ping is not None:
        if now >= max(ctl.ping[1], conn.last_rx) + s.nop_timeout:
            conn.fail(f"target silent for {now - conn.last_rx:.1f} s (NOP-Out ping not "
                      f"answered)")
            return True
        return False
    if now >= conn.last_rx + s.nop_interval:
        itt = conn.new_itt()
        ctl.ping = (itt, now)
        conn.send_pdu(NopOut(True, 0, itt, RESERVED_TAG, conn.cmdsn, conn.exp_statsn))
    return False


def _command_timed_out(conn: InitiatorConnection, cmd: Command) -> None:
    timeout = cmd.timeout if cmd.timeout is not None else conn.settings.command_timeout
    why = f"no answer within {timeout:g} s"
    if cmd in conn.queue:
        conn.queue.remove(cmd)
        cmd.fail(f"{why} (never sent: the target's command window stayed closed)")
        conn.events.append(CommandDone(cmd))
    elif conn.tasks.get(cmd.itt) is cmd:
        abort_task(conn, cmd, f"{why}; aborted")


# ---- task management -------------------------------------------------------------------
def abort_task(conn: InitiatorConnection, cmd: Command, why: str) -> int:
    """§11.5.1: ABORT TASK, immediate, RefCmdSN = the task's CmdSN."""
    itt = conn.new_itt()
    cmd.aborting = itt
    conn.ctl.tmfs[itt] = PendingTmf(itt, ABORT_TASK, cmd, conn.now + conn.settings.tmf_timeout,
                                    why)
    conn.send_pdu(TaskMgmtRequest(True, ABORT_TASK, encode_lun(cmd.lun), itt, cmd.itt,
                                  conn.cmdsn, conn.exp_statsn, cmd.cmdsn, 0))
    return itt


def on_tmf_response(conn: InitiatorConnection, rsp: TaskMgmtResponse) -> None:
    conn.advance_statsn(rsp.statsn)
    conn.update_window(rsp.exp_cmdsn, rsp.max_cmdsn)
    tmf = conn.ctl.tmfs.pop(rsp.itt, None)
    if tmf is None:
        return
    conn.events.append(TmfDone(rsp.itt, tmf.function, rsp.response))
    cmd = tmf.command
    if cmd is not None and not cmd.done and conn.tasks.get(cmd.itt) is cmd:
        cmd.fail(f"{tmf.why} (ABORT TASK response {rsp.response})")
        conn.complete(cmd)


# ---- NOP ---------------------------------------------------------------------------------
def on_nop_in(conn: InitiatorConnection, pdu: NopIn) -> None:
    conn.update_window(pdu.exp_cmdsn, pdu.max_cmdsn)
    if pdu.itt != RESERVED_TAG:  # the answer to our ping (§11.19.4: StatSN advances)
        conn.advance_statsn(pdu.statsn)
        if conn.ctl.ping is not None and conn.ctl.ping[0] == pdu.itt:
            conn.ctl.ping = None
        return
    if pdu.ttt != RESERVED_TAG:  # the target pings us: echo its TTT (§11.18.2)
        conn.send_pdu(NopOut(True, pdu.lun, RESERVED_TAG, pdu.ttt, conn.cmdsn, conn.exp_statsn))


# ---- Text --------------------------------------------------------------------------------
def send_text(conn: InitiatorConnection, pairs: list[tuple[str, str]]) -> int:
    itt = conn.new_itt()
    conn.ctl.texts[itt] = TextAccumulator()
    conn.send_pdu(TextRequest(True, True, False, 0, itt, RESERVED_TAG, conn.cmdsn,
                              conn.exp_statsn, encode_text(pairs)))
    return itt


def on_text_response(conn: InitiatorConnection, rsp: TextResponse) -> None:
    conn.advance_statsn(rsp.statsn)
    conn.update_window(rsp.exp_cmdsn, rsp.max_cmdsn)
    acc = conn.ctl.texts.get(rsp.itt)
    if acc is None:
        return
    acc.add(rsp.data)
    if rsp.final and not rsp.cont:
        del conn.ctl.texts[rsp.itt]
        conn.events.append(TextDone(rsp.itt, parse_text(acc.take())))
        return
    conn.send_pdu(TextRequest(True, True, False, 0, rsp.itt, rsp.ttt, conn.cmdsn,
                              conn.exp_statsn))  # §11.10.4: pull the next part


# ---- Reject ------------------------------------------------------------------------------
def on_reject(conn: InitiatorConnection, rej: Reject) -> None:
    conn.advance_statsn(rej.statsn)
    conn.update_window(rej.exp_cmdsn, rej.max_cmdsn)
    header = bytes(rej.data[:48])
    itt = int.from_bytes(header[16:20], "big") if len(header) >= 20 else RESERVED_TAG
    reason = _reject_name(rej.reason)
    if rej.reason == RejectReason.DATA_DIGEST_ERROR:
        conn.fail(f"target rejected our PDU: {reason}")
        return
    cmd = conn.tasks.get(itt)
    if cmd is not None:
        cmd.fail(f"target rejected the command: {reason}")
        conn.complete(cmd)
    elif itt in conn.ctl.texts:
        del conn.ctl.texts[itt]
        conn.events.append(TextDone(itt, [], f"target rejected the text request: {reason}"))
    elif itt in conn.ctl.tmfs:
        conn.fail(f"target rejected our task management request: {reason}")


def _reject_name(reason: int) -> str:
    try:
        return RejectReason(reason).name.lower().replace("_", " ")
    except ValueError:
        return f"reason 0x{reason:02x}"


# ---- Async Message and Logout --------------------------------------------------------------
def on_async(conn: InitiatorConnection, msg: AsyncMessage) -> None:
    conn.advance_statsn(msg.statsn)
    conn.update_window(msg.exp_cmdsn, msg.max_cmdsn)
    sense = bytes(msg.data[2:]) if len(msg.data) > 2 else b""
    conn.events.append(AsyncReceived(msg.event, msg.param1, msg.param2, msg.param3, sense))
    ctl = conn.ctl
    if msg.event in (AsyncEvent.LOGOUT_REQUESTED, AsyncEvent.RENEGOTIATE):
        ctl.draining = True
        ctl.drain_deadline = conn.now + max(1, msg.param3)
        if not conn.tasks:
            drained(conn)
    elif msg.event in (AsyncEvent.CONNECTION_DROP, AsyncEvent.SESSION_DROP):
        ctl.time2wait = float(msg.param2)


def drained(conn: InitiatorConnection) -> None:
    """Logout time: the tasks drained after a logout request, or its deadline passed."""
    conn.ctl.drain_deadline = 0.0
    if conn.state is S.FULL_FEATURE:
        logout(conn)


def logout(conn: InitiatorConnection) -> None:
    """§11.14: close the session (immediate; the response ends the connection)."""
    if conn.state is not S.FULL_FEATURE:
        return
    conn.ctl.draining = True
    conn.state = S.LOGGING_OUT
    conn.send_pdu(LogoutRequest(True, LogoutReason.CLOSE_SESSION, conn.new_itt(), conn.cid,
                                conn.cmdsn, conn.exp_statsn))


def on_logout_response(conn: InitiatorConnection, rsp: LogoutResponse) -> None:
    conn.advance_statsn(rsp.statsn)
    if conn.state is not S.LOGGING_OUT:
        conn.fail("unsolicited Logout Response")
        return
    conn.state = S.CLOSED
    conn.events.append(LoggedOut(rsp.response, rsp.time2wait, rsp.time2retain))
