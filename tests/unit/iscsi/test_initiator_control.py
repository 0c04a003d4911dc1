"""Initiator control paths against the target core: NOP keepalive and dead peers,
command timeouts with ABORT TASK, Async Messages, Logout, Reject, Text, redirects."""

from __future__ import annotations

from iscsi_sim import TARGET, portal
from scsi_standin import BLOCK, read10
from test_initiator_pair import Pair, done, settings

from blockyard.iscsi import NEED_DATA
from blockyard.iscsi.constants import AsyncEvent, Opcode, RejectReason
from blockyard.iscsi.framing import encode_pdu_bytes
from blockyard.iscsi.initiator import InitiatorConnection
from blockyard.iscsi.initiator_events import (
    AsyncReceived,
    ConnectionFailed,
    InitiatorState,
    LoggedOut,
    LoginRedirected,
    TextDone,
    TmfDone,
)
from blockyard.iscsi.pdu_target import AsyncMessage, LoginResponse
from blockyard.iscsi.textkeys import encode_text


def drain(conn: InitiatorConnection) -> list[object]:
    out = []
    while (ev := conn.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


# ---- NOP -----------------------------------------------------------------------------------
def test_keepalive_ping_when_idle_and_answer_clears_it() -> None:
    pair = Pair(settings(nop_interval=5, nop_timeout=10))
    pair.login()
    assert pair.ini.get_timer() == 5
    pair.tick(5.0)
    (ping,) = pair.sent(Opcode.NOP_OUT)
    assert ping.immediate and ping.itt != 0xFFFFFFFF
    assert pair.received(Opcode.NOP_IN)[-1].itt == ping.itt
    assert pair.ini.ctl.ping is None and pair.ini.state is InitiatorState.FULL_FEATURE


def test_dead_peer_detected_after_unanswered_ping() -> None:
    pair = Pair(settings(nop_interval=5, nop_timeout=10))
    pair.login()
    pair.ini.handle_timer(5.0)
    pair.ini.data_to_send()  # the ping is lost with the peer
    pair.ini.handle_timer(14.9)
    assert drain(pair.ini) == []
    pair.ini.handle_timer(15.0)
    (ev,) = drain(pair.ini)
    assert isinstance(ev, ConnectionFailed) and "NOP-Out ping not answered" in ev.reason


def test_target_ping_is_echoed() -> None:
    cfg = portal()
    cfg.nop_interval = 1.0
    pair = Pair(cfg=cfg)
    pair.login()
    pair.tgt.handle_timer(2.0)
    pair.run()
    assert pair.tgt._ping is None
    (echo,) = pair.sent(Opcode.NOP_OUT)
    assert echo.itt == 0xFFFFFFFF and echo.ttt == pair.received(Opcode.NOP_IN)[0].ttt


# ---- command timeouts --------------------------------------------------------------------
def test_timeout_sends_abort_task_and_fails_the_command() -> None:
    pair = Pair(settings(command_timeout=3.0), auto=False)
    pair.login()
    cmd = pair.command(read10(0, 8), read=8 * BLOCK)
    pair.run()
    assert pair.ini.get_timer() == 3.0
    pair.tick(3.5)
    (tmf,) = pair.sent(Opcode.TASK_MGMT_REQUEST)
    assert tmf.function == 1 and tmf.ref_itt == cmd.itt and tmf.ref_cmdsn == cmd.cmdsn
    events = pair.release()  # the target finishes the task, drops its data, answers the TMF
    assert [type(e) for e in events] == [TmfDone, type(events[1])]
    (got,) = done(events)
    assert got is cmd and "no answer within 3 s; aborted" in cmd.error
    assert not pair.received(Opcode.DATA_IN)


def test_unanswered_abort_drops_the_connection() -> None:
    pair = Pair(settings(command_timeout=1.0, tmf_timeout=2.0), auto=False)
    pair.login()
    pair.command(read10(0, 1), read=BLOCK)
    pair.run()
    pair.ini.handle_timer(1.0)
    pair.ini.data_to_send()  # the ABORT TASK never arrives
    pair.ini.handle_timer(3.0)
    (ev,) = drain(pair.ini)
    assert isinstance(ev, ConnectionFailed) and "not answered within 2 s" in ev.reason


def test_queued_command_times_out_without_abort() -> None:
    cfg = portal()
    cfg.cmd_window = 1
    pair = Pair(settings(command_timeout=2.0), cfg, auto=False)
    pair.login()
    first = pair.command(read10(0, 1), read=BLOCK)
    second = pair.command(read10(1, 1), read=BLOCK)
    pair.run()
    assert list(pair.ini.queue) == [second]
    pair.tick(2.0)
    assert second.done and "never sent" in second.error
    assert [t.ref_itt for t in pair.sent(Opcode.TASK_MGMT_REQUEST)] == [first.itt]


# ---- Async Message, Logout -------------------------------------------------------------------
def test_logout_request_drains_then_logs_out() -> None:
    pair = Pair(auto=False)
    pair.login()
    busy = pair.command(read10(0, 1), read=BLOCK)
    pair.run()
    pair.tgt.request_logout(5)
    events = pair.run()
    assert isinstance(events[0], AsyncReceived) and events[0].event == AsyncEvent.LOGOUT_REQUESTED
    later = pair.command(read10(1, 1), read=BLOCK)
    pair.run()
    assert list(pair.ini.queue) == [later]  # held back while draining
    events = pair.release()
    assert done(events) == [busy]
    assert isinstance(events[-1], LoggedOut) and events[-1].response == 0
    assert pair.ini.state is InitiatorState.CLOSED
    assert pair.ini.unfinished() == [later]  # for the next connection


def test_logout_deadline_logs_out_with_tasks_outstanding() -> None:
    pair = Pair(auto=False)
    pair.login()
    busy = pair.command(read10(0, 1), read=BLOCK)
    pair.run()
    pair.tgt.request_logout(2)
    pair.run()
    assert pair.ini.get_timer() == 2.0
    events = pair.tick(2.0)
    assert isinstance(events[-1], LoggedOut)
    assert pair.ini.unfinished() == [busy]


def test_connection_drop_announcement_sets_time2wait() -> None:
    pair = Pair()
    pair.login()
    w = pair.tgt.window
    pair.tgt.emit_pdu(AsyncMessage(0, 0xFFFFFFFF, pair.tgt.next_statsn(), w.exp_cmdsn,
                                   w.max_cmdsn, AsyncEvent.CONNECTION_DROP, 0, 0, 7, 20))
    (ev,) = pair.run()
    assert isinstance(ev, AsyncReceived) and ev.param2 == 7
    pair.ini.connection_lost()
    (failed,) = drain(pair.ini)
    assert isinstance(failed, ConnectionFailed) and failed.time2wait == 7


def test_logout_on_request() -> None:
    pair = Pair()
    pair.login()
    pair.ini.logout()
    (ev,) = pair.run()
    assert isinstance(ev, LoggedOut) and pair.sent(Opcode.LOGOUT_REQUEST)[0].reason == 0


# ---- Reject, Text, redirect ---------------------------------------------------------------
def test_reject_of_a_command_fails_it() -> None:
    pair = Pair(auto=False)
    pair.login()
    cmd = pair.command(read10(0, 1), read=BLOCK)
    pair.run()
    header = pair.sent(Opcode.SCSI_COMMAND)[0].encode_header()
    pair.tgt.reject(RejectReason.INVALID_PDU_FIELD, header)
    (ev,) = pair.run()
    assert done([ev]) == [cmd] and "invalid pdu field" in cmd.error


def test_reject_for_data_digest_error_drops_the_connection() -> None:
    pair = Pair(auto=False)
    pair.login()
    pair.command(read10(0, 1), read=BLOCK)
    pair.run()
    pair.tgt.reject(RejectReason.DATA_DIGEST_ERROR, pair.sent(Opcode.SCSI_COMMAND)[0]
                    .encode_header())
    (ev,) = pair.run()
    assert isinstance(ev, ConnectionFailed) and "data digest error" in ev.reason


def test_send_targets_in_a_discovery_session() -> None:
    pair = Pair(settings(target_name=""))
    assert pair.login().result.tsih != 0
    itt = pair.ini.send_targets()
    (ev,) = pair.run()
    assert isinstance(ev, TextDone) and ev.itt == itt
    assert ev.pairs == [("TargetName", TARGET), ("TargetAddress", "127.0.0.1:3260,1")]


def test_redirect_names_the_new_portal() -> None:
    ini = InitiatorConnection(settings(), 0x8000_0001, cmdsn=1)
    ini.data_to_send()
    rsp = LoginResponse(status=0x0101, data=encode_text({"TargetAddress": "10.0.0.2:3261,1"}))
    ini.receive_data(encode_pdu_bytes(rsp), 0.0)
    (ev,) = drain(ini)
    assert isinstance(ev, LoginRedirected)
    assert ev.redirect.address == "10.0.0.2:3261" and not ev.redirect.permanent
    assert ini.state is InitiatorState.CLOSED


def test_login_continuation_is_pulled() -> None:
    ini = InitiatorConnection(settings(), 0x8000_0001, cmdsn=1)
    ini.data_to_send()
    part = LoginResponse(cont=True, csg=0, data=b"AuthMethod=No")
    ini.receive_data(encode_pdu_bytes(part), 0.0)
    assert drain(ini) == []
    (pull,) = [b for b in ini.data_to_send()]
    assert len(pull) == 48  # an empty Login Request, T=0
    rest = LoginResponse(transit=True, csg=0, nsg=1, data=b"ne\0")
    ini.receive_data(encode_pdu_bytes(rest), 0.0)
    assert drain(ini) == [] and ini.login.stage == 1  # on to the operational stage
