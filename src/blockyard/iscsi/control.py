"""Full-feature control PDUs of the target: NOP, Text, Task Management, Logout.

Theory of operation.  These handlers are entries of ``target._DISPATCH``.
``numbered`` wraps each: an immediate PDU runs at once, a non-immediate one
passes the CmdSN window first (dropped outside it, deferred behind a gap).

* NOP-Out with a valid ITT is a ping, echoed by a NOP-In (§11.18/§11.19);
  with ITT 0xffffffff it answers our NOP-In ping (its TTT).  Our ping is
  sent after ``nop_interval`` seconds without any PDU; no answer within
  ``nop_timeout`` closes the connection.
* Text: SendTargets (``discovery.py``) and renegotiation of the keys allowed
  in full feature phase; C-bit continuation both ways (§11.10, §11.11).
* Task management (§11.5): the function table ``_TMF`` picks the affected
  tasks.  Tasks not yet running vanish at once; running ones are marked
  aborted, their results discarded when they come back, and the TMF waits
  for them (SAM: the response follows the end of every affected task).  A
  TMF that succeeds at this level becomes a ``TaskManagement`` event so the
  SCSI layer can reset its own state; ``complete_tmf`` sends the response.
  ABORT TASK of a command not yet received, whose RefCmdSN is in the window
  and before the TMF's CmdSN, fills that CmdSN and succeeds (§11.5.1).
* Logout (§11.14/§11.15): close the session or this connection (the same
  thing with MaxConnections=1); recovery removal is not supported at
  ErrorRecoveryLevel 0.  Outstanding tasks are dropped; after the response
  the connection closes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blockyard.errors import LocalProtocolError, RemoteProtocolError
from blockyard.iscsi.constants import (
    RESERVED_TAG,
    LogoutReason,
    LogoutResponseCode,
    RejectReason,
    TmfResponse,
)
from blockyard.iscsi.discovery import send_targets
from blockyard.iscsi.events import SessionClosing, TaskManagement
from blockyard.iscsi.keys import Use
from blockyard.iscsi.pdu import decode_lun
from blockyard.iscsi.pdu_initiator import LogoutRequest, NopOut, TaskMgmtRequest, TextRequest
from blockyard.iscsi.pdu_target import LogoutResponse, NopIn, TaskMgmtResponse, TextResponse
from blockyard.iscsi.serial import sn_lt
from blockyard.iscsi.state import State
from blockyard.iscsi.tasks import ABORTED, EXECUTING, Task
from blockyard.iscsi.textkeys import (
    TextAccumulator,
    TextFormatError,
    encode_text,
    parse_text,
    split_text,
)
from blockyard.scsi.task import TmfFunction

if TYPE_CHECKING:
    from blockyard.iscsi.target import TargetConnection

Handler = Callable[["TargetConnection", Any], None]


def numbered(handler: Handler) -> Handler:
    """Run ``handler`` now if the PDU is immediate, else in CmdSN order (§4.2.2.1)."""
    def run(conn: TargetConnection, pdu: Any) -> None:
        if pdu.immediate:
            handler(conn, pdu)
            return
        if len(pdu.data):
            pdu.data = bytes(pdu.data)  # it may wait behind a gap: keep a copy
        ready = conn.window.arrive(pdu.cmdsn, (handler, pdu))
        if ready is not None:
            conn.in_order(ready)
    return run


# ---- NOP ------------------------------------------------------------------------------
def on_nop_pdu(conn: TargetConnection, pdu: NopOut) -> None:
    """An answer to our ping (ITT 0xffffffff) is never numbered; a ping is (if I=0)."""
    if pdu.itt == RESERVED_TAG:
        conn.answer_ping(pdu.ttt)
    else:
        _numbered_nop(conn, pdu)


def on_nop_out(conn: TargetConnection, pdu: NopOut) -> None:
    if pdu.itt == RESERVED_TAG:
        conn.answer_ping(pdu.ttt)
        return
    w = conn.window
    echo = bytes(pdu.data[:conn.params.peer_max_recv_data_segment])
    conn.emit_pdu(NopIn(pdu.lun, pdu.itt, RESERVED_TAG, conn.next_statsn(), w.exp_cmdsn,
                        w.max_cmdsn, echo))


def nop_timer(conn: TargetConnection, now: float) -> None:
    portal = conn.portal
    if portal.nop_interval <= 0:
        return
    ping = conn._ping
    if ping is not None:
        if now >= ping[2]:
            conn.state = State.CLOSED
            conn.portal.registry.close(conn.owner)
            conn.events.append(SessionClosing("NOP-In ping not answered"))
        return
    if now < conn._next_ping:
        return
    if conn._activity or conn.tasks:
        conn._activity = False
        conn._next_ping = now + portal.nop_interval
        return
    ttt = conn.new_ttt()
    conn._ping = (ttt, now, now + portal.nop_timeout)
    w = conn.window
    conn.emit_pdu(NopIn(0, RESERVED_TAG, ttt, conn.statsn, w.exp_cmdsn, w.max_cmdsn))


_numbered_nop = numbered(on_nop_out)


# ---- Text -----------------------------------------------------------------------------
@dataclass(slots=True)
class TextState:
    acc: TextAccumulator = field(default_factory=TextAccumulator)
    chunks: dict[int, list[bytes]] = field(default_factory=dict)  # TTT -> parts still to send


def on_text(conn: TargetConnection, pdu: TextRequest) -> None:
    state = conn.text
    if pdu.ttt != RESERVED_TAG and pdu.ttt in state.chunks:
        _text_reply(conn, pdu, state.chunks.pop(pdu.ttt))
        return
    if pdu.cont:
        state.acc.add(pdu.data)
        _send_text(conn, pdu, b"", final=False, ttt=conn.new_ttt())
        return
    try:
        pairs = parse_text(state.acc.take() + bytes(pdu.data))
    except TextFormatError as exc:
        raise RemoteProtocolError(str(exc), RejectReason.PROTOCOL_ERROR, fatal=False) from exc
    answers, special = conn.login.neg.respond(pairs, Use.FFP)
    session = conn.session
    assert session is not None
    for key, value in special:
        if key == "SendTargets":
            answers += send_targets(value, conn.portal, session.initiator_name,
                                    session.target_name, conn.local_address)
        else:
            answers.append((key, "Reject"))
    parts = split_text(encode_text(answers), conn.params.peer_max_recv_data_segment)
    _text_reply(conn, pdu, parts)


def _text_reply(conn: TargetConnection, pdu: TextRequest, parts: list[bytes]) -> None:
    if len(parts) > 1:
        ttt = conn.new_ttt()
        conn.text.chunks[ttt] = parts[1:]
        _send_text(conn, pdu, parts[0], final=False, ttt=ttt, cont=True)
    else:
        _send_text(conn, pdu, parts[0], final=True, ttt=RESERVED_TAG)


def _send_text(conn: TargetConnection, pdu: TextRequest, data: bytes, final: bool, ttt: int,
               cont: bool = False) -> None:
    w = conn.window
    conn.emit_pdu(TextResponse(final, cont, pdu.lun, pdu.itt, ttt, conn.next_statsn(),
                               w.exp_cmdsn, w.max_cmdsn, data))


# ---- Task management -------------------------------------------------------------------
@dataclass(slots=True)
class PendingTmf:
    itt: int
    function: int
    lun: int
    ref_itt: int
    response: int
    waiting: set[int] = field(default_factory=set)


def on_tmf(conn: TargetConnection, pdu: TaskMgmtRequest) -> None:
    session = conn.session
    assert session is not None
    if session.discovery:
        raise RemoteProtocolError("TMF in a discovery session", RejectReason.PROTOCOL_ERROR,
                                  fatal=False)
    lun = decode_lun(pdu.lun)
    tmf = PendingTmf(pdu.itt, pdu.function, lun, pdu.ref_itt, TmfResponse.FUNCTION_COMPLETE)
    action = _TMF.get(pdu.function)
    if action is None:
        tmf.response = TmfResponse.REJECTED
    else:
        action(conn, pdu, tmf)
    conn.tmfs[pdu.itt] = tmf
    _tmf_ready(conn, tmf)


def _abort_task(conn: TargetConnection, pdu: TaskMgmtRequest, tmf: PendingTmf) -> None:
    task = conn.tasks.get(pdu.ref_itt)
    if task is not None and task.state != ABORTED and task.lun == tmf.lun:
        abort_matching(conn, lambda t: t is task, tmf)
        return
    w = conn.window
    if w.in_window(pdu.ref_cmdsn) and sn_lt(pdu.ref_cmdsn, pdu.cmdsn):
        ready = w.fill(pdu.ref_cmdsn)  # §11.5.1: consider the CmdSN received
        if ready is not None:
            conn.in_order(ready)
            return
    tmf.response = TmfResponse.TASK_DOES_NOT_EXIST


def _abort_lun(conn: TargetConnection, pdu: TaskMgmtRequest, tmf: PendingTmf) -> None:
    policy = conn.portal.targets.get(conn.session.target_name if conn.session else "")
    if policy is None or tmf.lun not in policy.luns:
        tmf.response = TmfResponse.LUN_DOES_NOT_EXIST
        return
    abort_matching(conn, lambda t: t.lun == tmf.lun, tmf)


def _abort_all(conn: TargetConnection, pdu: TaskMgmtRequest, tmf: PendingTmf) -> None:
    abort_matching(conn, lambda t: True, tmf)


def _unsupported(response: TmfResponse) -> Callable[..., None]:
    def act(conn: TargetConnection, pdu: TaskMgmtRequest, tmf: PendingTmf) -> None:
        tmf.response = response
    return act


_TMF: dict[int, Callable[[TargetConnection, TaskMgmtRequest, PendingTmf], None]] = {
    TmfFunction.ABORT_TASK: _abort_task,
    TmfFunction.ABORT_TASK_SET: _abort_lun,
    TmfFunction.CLEAR_TASK_SET: _abort_lun,
    TmfFunction.LOGICAL_UNIT_RESET: _abort_lun,
    TmfFunction.TARGET_WARM_RESET: _abort_all,
    TmfFunction.TARGET_COLD_RESET: _abort_all,
    TmfFunction.CLEAR_ACA: _unsupported(TmfResponse.NOT_SUPPORTED),
    TmfFunction.TASK_REASSIGN: _unsupported(TmfResponse.REASSIGNMENT_NOT_SUPPORTED),
}


def abort_matching(conn: TargetConnection, match: Callable[[Task], bool],
                   tmf: PendingTmf | None) -> None:
    """Abort this session's tasks that ``match``; running ones are waited for."""
    for task in [t for t in conn.tasks.values() if t.state != ABORTED and match(t)]:
        running = task.state == EXECUTING
        task.state = ABORTED
        conn.aborted.add(task.itt)
        if running:
            if tmf is not None:
                task.aborted_by = tmf.itt
                tmf.waiting.add(task.itt)
        else:
            conn.drop_task(task)
    if len(conn.aborted) > 4096:
        conn.aborted = {t.itt for t in conn.tasks.values() if t.state == ABORTED}
    conn.pump()


def aborted_task_done(conn: TargetConnection, task: Task) -> None:
    """A running task that a TMF aborted came back: its result is dropped."""
    tmf = conn.tmfs.get(task.aborted_by) if task.aborted_by is not None else None
    if tmf is not None:
        tmf.waiting.discard(task.itt)
        _tmf_ready(conn, tmf)


def _tmf_ready(conn: TargetConnection, tmf: PendingTmf) -> None:
    if tmf.waiting:
        return
    if tmf.response == TmfResponse.FUNCTION_COMPLETE:
        conn.events.append(TaskManagement(tmf.itt, tmf.function, tmf.lun, tmf.ref_itt,
                                          tmf.response))
    else:
        complete_tmf(conn, tmf.itt, tmf.response)


def complete_tmf(conn: TargetConnection, itt: int, response: int) -> None:
    tmf = conn.tmfs.pop(itt, None)
    if tmf is None:
        raise LocalProtocolError(f"no task management function 0x{itt:08x} pending")
    if conn.state is not State.FULL_FEATURE:
        return
    w = conn.window
    conn.emit_pdu(TaskMgmtResponse(response, itt, conn.next_statsn(), w.exp_cmdsn,
                                   w.max_cmdsn))
    if tmf.function == TmfFunction.TARGET_COLD_RESET and response == 0:
        conn.state = State.LOGGED_OUT  # §11.5.1: connections close after a cold reset
        conn.portal.registry.close(conn.owner)
        conn.events.append(SessionClosing("target cold reset"))


# ---- Logout -----------------------------------------------------------------------------
def on_logout(conn: TargetConnection, pdu: LogoutRequest) -> None:
    session = conn.session
    assert session is not None
    code = LogoutResponseCode.SUCCESS
    if pdu.reason == LogoutReason.REMOVE_FOR_RECOVERY:
        code = LogoutResponseCode.RECOVERY_NOT_SUPPORTED
    elif pdu.reason == LogoutReason.CLOSE_CONNECTION and pdu.cid != session.cid:
        code = LogoutResponseCode.CID_NOT_FOUND
    elif pdu.reason not in (LogoutReason.CLOSE_SESSION, LogoutReason.CLOSE_CONNECTION):
        raise RemoteProtocolError(f"logout reason {pdu.reason}", RejectReason.INVALID_PDU_FIELD,
                                  fatal=False)
    w = conn.window
    conn.emit_pdu(LogoutResponse(code, pdu.itt, conn.next_statsn(), w.exp_cmdsn, w.max_cmdsn))
    if code != LogoutResponseCode.SUCCESS:
        return
    abort_matching(conn, lambda t: True, None)
    conn.state = State.LOGGED_OUT
    conn.portal.registry.close(conn.owner)
    conn.events.append(SessionClosing("logout", logout=True))
