"""The initiator session: reinstatement with the same ISID after a drop (pair test
against the target core and its session registry), reissue of exactly the commands
whose status never came, and the reconnect policy."""

from __future__ import annotations

import os

from iscsi_sim import portal
from scsi_standin import BLOCK, StandinDevice, read10, write10
from test_initiator_pair import Pair, done, settings

from blockyard.iscsi.events import LoginComplete
from blockyard.iscsi.initiator_command import Command
from blockyard.iscsi.initiator_events import LoginDone
from blockyard.iscsi.initiator_login import LoginError
from blockyard.iscsi.initiator_session import InitiatorSession, SessionState


def _up(session: InitiatorSession, pair: Pair) -> None:
    (ev,) = [e for e in pair.run() if isinstance(e, LoginDone)]
    session.login_done(ev.result)


def test_reinstatement_reissues_only_unanswered_commands() -> None:
    cfg, dev = portal(), StandinDevice()
    session = InitiatorSession(settings(), isid=0x8000_4242)
    first = Pair(cfg=cfg, device=dev, auto=False, conn=session.connect(0.0))
    _up(session, first)
    payload = os.urandom(8 * BLOCK)
    answered = Command(read10(0, 1), read_len=BLOCK)
    lost_reply = Command(write10(8, 8), data_out=payload)
    never_run = Command(read10(8, 8), read_len=8 * BLOCK)
    for cmd in (answered, lost_reply, never_run):
        session.submit(cmd, 0.0)
    first._to_target()
    held = {ev.command.cdb[0]: ev for ev in first.held}
    assert len(first.held) == 3
    first.finish(first.held[0])  # `answered`: its status reaches us
    first._to_initiator()
    assert done(first.events) == [answered]
    session.command_done(answered)
    first.finish(held[0x2A])  # the write runs on the target, its status is lost with the wire
    first.tgt.data_to_send()
    first.ini.connection_lost("connection reset by peer")
    assert session.connection_ended(1.0, "connection reset by peer") == 3.0  # Time2Wait 2
    assert session.state is SessionState.DOWN

    second = Pair(cfg=cfg, device=dev, conn=session.connect(3.0))
    _up(session, second)
    (complete,) = [e for e in second.target_events if isinstance(e, LoginComplete)]
    assert complete.replaced is first.tgt.owner  # §6.3.5: the old session was reinstated
    assert second.ini.isid == first.ini.isid and session.reconnects == 1
    assert done(second.events) == [lost_reply, never_run]
    assert bytes(never_run.data) == payload and lost_reply.status == 0
    assert [c.cdb[0] for c in dev.calls].count(0x28) == 2  # answered once, never_run once
    assert lost_reply.attempts == 2 and answered.attempts == 1


def test_reconnect_backoff_and_bound() -> None:
    session = InitiatorSession(settings(), reconnect_for=3.0)
    session.connect(0.0)
    assert session.connection_ended(10.0, "refused") == 10.25  # never up: backoff
    session.connect(10.25)
    assert session.connection_ended(10.25, "refused") == 10.75
    session.connect(10.75)
    assert session.connection_ended(10.75, "refused") == 11.75
    session.connect(11.75)
    assert session.connection_ended(11.75, "refused") is None  # 13.75 is past 10 + 3 s
    assert session.state is SessionState.FAILED and session.last_error == "refused"


def test_give_up_fails_every_pending_command() -> None:
    session = InitiatorSession(settings())
    session.connect(0.0)
    cmds = [Command(read10(i, 1), read_len=BLOCK) for i in range(3)]
    for c in cmds:
        session.submit(c, 0.0)
    assert session.give_up("target gone") == cmds
    assert all(c.done and c.error == "target gone" for c in cmds)
    late = Command(read10(0, 1), read_len=BLOCK)
    session.submit(late, 1.0)
    assert late.done and late.error == "target gone"
    assert session.revive(2.0) and session.state is SessionState.DOWN
    again = Command(read10(0, 1), read_len=BLOCK)
    session.submit(again, 2.0)
    assert not again.done and session.pending == {again.seq: again}


def test_final_login_errors_are_not_retried() -> None:
    session = InitiatorSession(settings())
    session.connect(0.0)
    assert session.login_refused(0.0, LoginError("authentication failure", 0x0201)) is None
    assert session.state is SessionState.FAILED
    busy = InitiatorSession(settings())
    busy.connect(0.0)
    assert busy.login_refused(0.0, LoginError("service unavailable", 0x0301)) == 0.25


def test_submit_while_logging_out_waits_for_the_next_connection() -> None:
    session = InitiatorSession(settings(), isid=0x8000_0007)
    pair = Pair(conn=session.connect(0.0))
    _up(session, pair)
    pair.ini.logout()
    late = Command(read10(0, 1), read_len=BLOCK)
    session.submit(late, 0.0)
    assert not late.done and late not in pair.ini.queue
    pair.run()
    session.connection_ended(1.0, "the target asked us to log out", 0.0)
    second = Pair(cfg=pair.cfg, device=pair.device, conn=session.connect(1.0))
    _up(session, second)
    assert done(second.events) == [late] and late.status == 0
