"""Task management, NOP-Out/NOP-In and the ping timer, Text continuation, Logout."""

from __future__ import annotations

import pytest
from iscsi_sim import Sim
from scsi_standin import read10, write10

from blockyard.errors import LocalProtocolError
from blockyard.iscsi import CommandReady, SessionClosing, TaskManagement
from blockyard.iscsi.constants import RESERVED_TAG
from blockyard.iscsi.pdu import encode_lun
from blockyard.iscsi.pdu_initiator import (
    DataOut,
    LogoutRequest,
    NopOut,
    SnackRequest,
    TaskMgmtRequest,
    TextRequest,
)
from blockyard.iscsi.pdu_target import (
    LogoutResponse,
    NopIn,
    Reject,
    ScsiResponse,
    TaskMgmtResponse,
    TextResponse,
)
from blockyard.iscsi.textkeys import encode_text, parse_text
from blockyard.scsi.task import ScsiResult, TmfFunction


def session(**keys: str) -> Sim:
    s = Sim()
    assert s.login(extra=list(keys.items())).status == 0
    return s


def tmf(s: Sim, function: int, ref_itt: int = RESERVED_TAG, lun: int = 0,
        ref_cmdsn: int = 0) -> list:
    return s.send(TaskMgmtRequest(immediate=True, function=function, lun=encode_lun(lun),
                                  itt=s.next_itt(), ref_itt=ref_itt, cmdsn=s.cmdsn,
                                  ref_cmdsn=ref_cmdsn))


def test_abort_task_of_a_running_command_waits_and_suppresses_its_status() -> None:
    s = session()
    s.auto = False
    itt, _ = s.command(write10(0, 8), write=bytes(4096))
    assert isinstance(s.events[-1], CommandReady)
    assert tmf(s, TmfFunction.ABORT_TASK, itt, ref_cmdsn=s.cmdsn - 1) == []  # waits
    s.target.complete_command(itt, ScsiResult(data_out_used=4096))
    s.pump()
    event = s.events[-1]
    assert isinstance(event, TaskManagement) and event.function == TmfFunction.ABORT_TASK
    s.target.complete_tmf(event.itt, 0)
    out = s.recv()
    assert [type(p) for p in out] == [TaskMgmtResponse]  # no SCSI Response for the write
    assert out[0].response == 0


def test_abort_task_after_completion_is_task_does_not_exist() -> None:
    s = session()
    itt, out = s.command(bytes(16))
    assert isinstance(out[0], ScsiResponse)
    out = tmf(s, TmfFunction.ABORT_TASK, itt, ref_cmdsn=s.cmdsn - 1)
    assert out[0].response == 1  # libiscsi iSCSITMF accepts this outcome


def test_abort_task_of_a_command_still_waiting_for_data() -> None:
    s = session(InitialR2T="Yes", ImmediateData="No")
    itt, out = s.command(write10(0, 2), write=bytes(1024), immediate_data=0)
    r2t = out[0]
    out = tmf(s, TmfFunction.ABORT_TASK, itt, ref_cmdsn=s.cmdsn - 1)
    assert out[0].response == 0
    assert s.send(DataOut(final=True, itt=itt, ttt=r2t.ttt, data=bytes(1024))) == []  # dropped
    assert s.device.calls == []


def test_abort_task_of_a_command_not_yet_received_fills_its_cmdsn() -> None:
    s = session()
    missing = s.cmdsn
    s.cmdsn += 1
    s.auto = False
    s.command(read10(0, 1), read=512)  # waits behind the gap at ``missing``
    assert not any(isinstance(e, CommandReady) for e in s.events)
    out = tmf(s, TmfFunction.ABORT_TASK, 0x999, ref_cmdsn=missing)
    assert any(isinstance(e, CommandReady) for e in s.events)  # the gap is closed
    assert out == []  # FUNCTION COMPLETE goes through the TaskManagement event
    s.target.complete_tmf(s.events[-1].itt if isinstance(s.events[-1], TaskManagement)
                          else next(e.itt for e in s.events if isinstance(e, TaskManagement)),
                          0)
    assert [p.response for p in s.recv() if isinstance(p, TaskMgmtResponse)] == [0]


def test_lun_reset_aborts_the_luns_tasks() -> None:
    s = session()
    s.auto = False
    a, _ = s.command(read10(0, 1), read=512)
    out = tmf(s, TmfFunction.LOGICAL_UNIT_RESET)
    assert out == []
    s.target.complete_command(a, ScsiResult(data=bytes(512)))
    s.pump()
    event = s.events[-1]
    assert isinstance(event, TaskManagement) and event.lun == 0
    s.target.complete_tmf(event.itt, 0)
    assert [type(p) for p in s.recv()] == [TaskMgmtResponse]


@pytest.mark.parametrize(("function", "lun", "response"), [
    (TmfFunction.LOGICAL_UNIT_RESET, 7, 2),  # no such LUN
    (TmfFunction.ABORT_TASK_SET, 7, 2),
    (TmfFunction.CLEAR_ACA, 0, 5),  # not supported
    (TmfFunction.TASK_REASSIGN, 0, 4),  # ERL 0: no allegiance reassignment
    (99, 0, 255),  # unknown function: rejected
])
def test_tmf_answers_without_the_scsi_layer(function: int, lun: int, response: int) -> None:
    s = session()
    out = tmf(s, function, lun=lun)
    assert [type(p) for p in out] == [TaskMgmtResponse] and out[0].response == response


@pytest.mark.parametrize("function", [TmfFunction.ABORT_TASK_SET, TmfFunction.CLEAR_TASK_SET,
                                      TmfFunction.TARGET_WARM_RESET])
def test_set_and_reset_functions_reach_the_scsi_layer(function: int) -> None:
    s = session()
    out = tmf(s, function)
    assert out[0].response == 0
    assert isinstance(s.events[-1], TaskManagement) and s.events[-1].function == function


def test_cold_reset_closes_the_session_after_the_response() -> None:
    s = session()
    out = tmf(s, TmfFunction.TARGET_COLD_RESET)
    assert out[0].response == 0 and isinstance(s.events[-1], SessionClosing)


def test_complete_tmf_twice_is_a_local_error() -> None:
    s = session()
    tmf(s, TmfFunction.ABORT_TASK_SET)
    with pytest.raises(LocalProtocolError):
        s.target.complete_tmf(s.events[-1].itt, 0)


def test_complete_command_for_an_unknown_task_is_a_local_error() -> None:
    s = session()
    with pytest.raises(LocalProtocolError):
        s.target.complete_command(12345, ScsiResult())


# ---- NOP ---------------------------------------------------------------------------------
def test_ping_is_echoed() -> None:
    s = session()
    out = s.send(NopOut(itt=0x77, cmdsn=s.cmdsn, data=b"ping!"))
    s.cmdsn += 1
    assert isinstance(out[0], NopIn) and out[0].itt == 0x77 and out[0].data == b"ping!"
    assert out[0].ttt == RESERVED_TAG and out[0].exp_cmdsn == s.cmdsn


def test_target_ping_timer_and_answer() -> None:
    s = Sim(now=100.0)
    s.cfg.nop_interval, s.cfg.nop_timeout = 5.0, 3.0
    s.login()
    t = s.target
    assert t.get_timer() == 105.0
    t.handle_timer(105.0)
    ping = s.recv()
    assert isinstance(ping[0], NopIn) and ping[0].itt == RESERVED_TAG
    assert ping[0].ttt != RESERVED_TAG and t.get_timer() == 108.0
    statsn_before = ping[0].statsn
    s.send(NopOut(immediate=True, itt=RESERVED_TAG, ttt=ping[0].ttt, cmdsn=s.cmdsn))
    assert t.get_timer() == 110.0  # next ping one interval after the last
    _, out = s.command(bytes(16))
    assert out[0].statsn == statsn_before  # a ping does not use a StatSN


def test_activity_postpones_the_ping_and_silence_times_out() -> None:
    s = Sim(now=0.0)
    s.cfg.nop_interval, s.cfg.nop_timeout = 5.0, 3.0
    s.login()
    s.command(bytes(16))
    s.target.handle_timer(5.0)
    assert s.recv() == [] and s.target.get_timer() == 10.0
    s.target.handle_timer(10.0)
    assert isinstance(s.recv()[0], NopIn)
    s.target.handle_timer(13.0)
    s.pump()
    assert isinstance(s.events[-1], SessionClosing) and "NOP" in s.events[-1].reason


# ---- Text, SNACK, Logout ------------------------------------------------------------------
def test_text_response_continues_over_mrdsl() -> None:
    s = session(MaxRecvDataSegmentLength="512")
    s.target.portal.targets[s.target.session.target_name]  # the session's own target
    keys = [(f"X-k{i:03d}", "v") for i in range(60)]
    out = s.send(TextRequest(itt=0x50, cmdsn=s.cmdsn, data=encode_text(keys)))
    s.cmdsn += 1
    parts = [out[0]]
    while not parts[-1].final:
        assert parts[-1].cont and len(parts[-1].data) <= 512 and parts[-1].ttt != RESERVED_TAG
        parts += s.send(TextRequest(itt=0x50, ttt=parts[-1].ttt, cmdsn=s.cmdsn, immediate=True))
    assert all(isinstance(p, TextResponse) for p in parts) and len(parts) > 1
    answers = parse_text(b"".join(p.data for p in parts))
    assert len(answers) == 60 and {v for _, v in answers} == {"NotUnderstood"}


def test_text_request_continued_by_the_initiator() -> None:
    s = session()
    raw = encode_text([("SendTargets", "All")])
    out = s.send(TextRequest(itt=0x60, final=False, cont=True, cmdsn=s.cmdsn, data=raw[:5]))
    s.cmdsn += 1
    assert out[0].data == b"" and not out[0].final
    out = s.send(TextRequest(itt=0x60, ttt=out[0].ttt, cmdsn=s.cmdsn, data=raw[5:]))
    s.cmdsn += 1
    assert ("TargetName", s.target.session.target_name) in parse_text(out[0].data)


def test_snack_is_not_supported_at_erl0() -> None:
    s = session()
    out = s.send(SnackRequest(itt=1))
    assert isinstance(out[0], Reject) and out[0].reason == 0x05


@pytest.mark.parametrize(("reason", "cid", "code"), [(0, 0, 0), (1, 0, 0), (1, 5, 1), (2, 0, 2)])
def test_logout(reason: int, cid: int, code: int) -> None:
    s = session()
    out = s.send(LogoutRequest(reason=reason, itt=0x70, cid=cid, cmdsn=s.cmdsn))
    assert isinstance(out[0], LogoutResponse) and out[0].response == code
    closing = [e for e in s.events if isinstance(e, SessionClosing)]
    assert bool(closing) == (code == 0)
    if code == 0:
        assert closing[0].logout and s.target.state.value == "logged-out"


def test_logout_drops_outstanding_tasks() -> None:
    s = session()
    s.auto = False
    itt, _ = s.command(read10(0, 1), read=512)
    s.send(LogoutRequest(itt=0x71, cmdsn=s.cmdsn))
    s.target.complete_command(itt, ScsiResult(data=bytes(512)))
    assert s.recv() == []  # no status after the logout response
