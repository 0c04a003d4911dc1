"""The sans-IO initiator against the sans-IO target core over a fake wire.

``Pair`` moves bytes between an ``InitiatorConnection`` and a
``TargetConnection`` (whose SCSI commands run on the RAM stand-in), and
collects the initiator's events.  Other ``test_initiator_*`` files import it.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from iscsi_sim import INITIATOR, TARGET, portal
from scsi_standin import BLOCK, StandinDevice, read10, run_sync, write10

from blockyard.iscsi import NEED_DATA, CommandReady, TargetConnection, TaskManagement
from blockyard.iscsi.chap import ChapCredentials
from blockyard.iscsi.constants import Opcode
from blockyard.iscsi.framing import PduReader
from blockyard.iscsi.initiator import InitiatorConnection
from blockyard.iscsi.initiator_command import Command
from blockyard.iscsi.initiator_config import InitiatorSettings
from blockyard.iscsi.initiator_events import (
    CommandDone,
    ConnectionFailed,
    InitiatorState,
    LoginDone,
    LoginFailed,
)
from blockyard.iscsi.keys import target_preferences
from blockyard.iscsi.pdu import Pdu
from blockyard.iscsi.session import PortalConfig

SECRET = "initiator-secret-1"
TSECRET = "target-secret-22"


def settings(**kw: Any) -> InitiatorSettings:
    base: dict[str, Any] = dict(initiator_name=INITIATOR, target_name=TARGET, nop_interval=0,
                                command_timeout=0)
    base.update(kw)
    return InitiatorSettings(**base)


class Pair:
    """An initiator connection wired to a target connection; see the module docstring."""

    def __init__(self, ini: InitiatorSettings | None = None, cfg: PortalConfig | None = None,
                 device: StandinDevice | None = None, auto: bool = True, isid: int = 0x8000_1234,
                 now: float = 0.0, conn: InitiatorConnection | None = None) -> None:
        self.cfg = cfg or portal()
        self.device = device or StandinDevice()
        self.auto = auto
        self.ini = conn or InitiatorConnection(ini or settings(), isid, now=now, cmdsn=100)
        self.tgt = TargetConnection(self.cfg, local_address="127.0.0.1:3260", owner=object())
        self.events: list[Any] = []
        self.target_events: list[Any] = []
        self.held: list[CommandReady] = []
        self.wire_to_target: list[Pdu] = []  # decoded copies of what the initiator sent
        self.wire_to_initiator: list[Pdu] = []
        self._spy_i, self._spy_t = PduReader(1 << 24), PduReader(1 << 24)
        self.now = now

    def run(self, rounds: int = 100) -> list[Any]:
        """Exchange bytes until both sides are quiet; return the new initiator events."""
        start = len(self.events)
        for _ in range(rounds):
            self._target_events()
            moved = self._to_target() | self._to_initiator()
            if not moved:
                break
        return self.events[start:]

    def _spy(self, reader: PduReader, bufs: list[Any], sink: list[Pdu], hd: bool,
             dd: bool) -> None:
        reader.header_digest, reader.data_digest = hd, dd
        for b in bufs:
            reader.feed(b)
        while (pdu := reader.next_pdu()) is not None:
            pdu.data = bytes(pdu.data)
            sink.append(pdu)

    def _to_target(self) -> bool:
        out = self.ini.data_to_send()
        if not out:
            return False
        self._spy(self._spy_i, out, self.wire_to_target, self.tgt.hd, self.tgt.dd)
        for buf in out:
            self.tgt.receive_data(bytes(buf))
        self._target_events()
        return True

    def _target_events(self) -> None:
        while (ev := self.tgt.next_event()) is not NEED_DATA:
            self.target_events.append(ev)
            if type(ev) is CommandReady:
                if self.auto:
                    self.finish(ev)
                else:
                    self.held.append(ev)
            elif type(ev) is TaskManagement:
                self.tgt.complete_tmf(ev.itt, ev.response)

    def finish(self, ev: CommandReady) -> None:
        self.tgt.complete_command(ev.itt, run_sync(self.device.execute(ev.command)))

    def release(self) -> list[Any]:
        held, self.held = self.held, []
        for ev in held:
            self.finish(ev)
        return self.run()

    def _to_initiator(self) -> bool:
        out = self.tgt.data_to_send()
        if not out:
            return False
        self._spy(self._spy_t, out, self.wire_to_initiator, self.ini.hd, self.ini.dd)
        for buf in out:
            self.ini.receive_data(bytes(buf), self.now)
        while (ev := self.ini.next_event()) is not NEED_DATA:
            self.events.append(ev)
        return True

    def login(self) -> LoginDone:
        events = self.run()
        done = [e for e in events if isinstance(e, LoginDone)]
        assert done, events
        return done[0]

    def command(self, cdb: bytes, read: int = 0, write: bytes | None = None) -> Command:
        cmd = Command(cdb, data_out=write, read_len=read)
        self.ini.submit(cmd, self.now)
        return cmd

    def tick(self, now: float) -> list[Any]:
        self.now = now
        self.ini.handle_timer(now)
        return self.run()

    def sent(self, opcode: int) -> list[Pdu]:
        return [p for p in self.wire_to_target if p.OPCODE == opcode]

    def received(self, opcode: int) -> list[Pdu]:
        return [p for p in self.wire_to_initiator if p.OPCODE == opcode]


def done(events: list[Any]) -> list[Command]:
    return [e.command for e in events if isinstance(e, CommandDone)]


# ---- login and negotiation -----------------------------------------------------------------
def test_login_negotiates_large_segments_and_unsolicited_data() -> None:
    pair = Pair()
    result = pair.login().result
    p = result.params
    assert pair.ini.state is InitiatorState.FULL_FEATURE
    assert result.tsih != 0
    assert p.max_recv_data_segment == 262144
    assert p.peer_max_recv_data_segment == 262144  # the target's declaration
    assert p.max_burst_length == 1 << 20 and p.first_burst_length == 1 << 20  # MIN(16M, 1M)
    assert p.immediate_data is True and p.initial_r2t is False
    assert p.header_digest == "None" and p.error_recovery_level == 0
    offered = dict(__import__("blockyard.iscsi.textkeys", fromlist=["x"]).parse_text(
        pair.sent(Opcode.LOGIN_REQUEST)[-1].data))
    assert offered["MaxBurstLength"] == str((16 << 20) - 512)
    assert offered["MaxRecvDataSegmentLength"] == "262144"
    assert offered["InitialR2T"] == "No" and offered["ImmediateData"] == "Yes"


def test_chap_one_way() -> None:
    cfg = portal(chap=ChapCredentials("alice", SECRET))
    pair = Pair(settings(chap=ChapCredentials("alice", SECRET)), cfg)
    assert pair.login().result.negotiated["AuthMethod"] == "CHAP"


def test_chap_wrong_secret_is_authentication_failure() -> None:
    cfg = portal(chap=ChapCredentials("alice", SECRET))
    pair = Pair(settings(chap=ChapCredentials("alice", "not-the-secret")), cfg)
    (ev,) = pair.run()
    assert isinstance(ev, LoginFailed) and ev.error.status == 0x0201 and ev.error.auth
    assert "authentication failure (0x0201)" in str(ev.error)


def test_chap_required_but_not_configured() -> None:
    pair = Pair(settings(), portal(chap=ChapCredentials("alice", SECRET)))
    (ev,) = pair.run()
    assert isinstance(ev, LoginFailed) and ev.error.status == 0x0201


def test_mutual_chap() -> None:
    cfg = portal(chap=ChapCredentials("alice", SECRET),
                 mutual_chap=ChapCredentials("target", TSECRET))
    pair = Pair(settings(chap=ChapCredentials("alice", SECRET),
                         mutual=ChapCredentials("target", TSECRET)), cfg)
    pair.login()
    sent = pair.sent(Opcode.LOGIN_REQUEST)
    assert any(b"CHAP_C=0x" in p.data for p in sent)  # our challenge went out


def test_mutual_chap_wrong_target_secret_fails() -> None:
    cfg = portal(chap=ChapCredentials("alice", SECRET),
                 mutual_chap=ChapCredentials("target", "a-different-one"))
    pair = Pair(settings(chap=ChapCredentials("alice", SECRET),
                         mutual=ChapCredentials("target", TSECRET)), cfg)
    (ev,) = pair.run()
    assert isinstance(ev, LoginFailed) and ev.error.auth and ev.error.status is None
    assert "invalid mutual CHAP response" in str(ev.error)


def test_mutual_chap_refused_when_target_does_not_authenticate() -> None:
    pair = Pair(settings(chap=ChapCredentials("alice", SECRET),
                         mutual=ChapCredentials("target", TSECRET)), portal())
    (ev,) = pair.run()
    assert isinstance(ev, LoginFailed) and "would not authenticate itself" in str(ev.error)


def test_unknown_target_is_not_found() -> None:
    pair = Pair(settings(target_name="iqn.2026-11.org.blockyard:nope"))
    (ev,) = pair.run()
    assert isinstance(ev, LoginFailed) and ev.error.status == 0x0203
    assert "target not found" in str(ev.error)


# ---- data path -----------------------------------------------------------------------------
@pytest.mark.parametrize("digest", ["None", "CRC32C"])
def test_write_then_read_with_phase_collapse(digest: str) -> None:
    pair = Pair(settings(header_digest=(digest,), data_digest=(digest,)))
    assert pair.login().result.params.data_digest == digest
    payload = os.urandom(2048 * BLOCK)  # 1 MiB: immediate, unsolicited Data-Out, R2T
    w = pair.command(write10(0, 2048), write=payload)
    (got,) = done(pair.run())
    assert got is w and w.status == 0 and not w.error
    assert bytes(pair.device.disk[:len(payload)]) == payload
    r = pair.command(read10(0, 2048), read=len(payload))
    (got,) = done(pair.run())
    assert got is r and r.status == 0 and bytes(r.data) == payload
    assert not pair.received(Opcode.SCSI_RESPONSE)[1:]  # the read's status rode on Data-In
    assert pair.received(Opcode.DATA_IN)[-1].status_present


def test_write_via_r2t_only_when_initial_r2t() -> None:
    prefs = target_preferences(first_burst_length=65536)
    cfg = portal(prefs=prefs)
    pair = Pair(settings(initial_r2t=True, immediate_data=False), cfg, StandinDevice(8192))
    params = pair.login().result.params
    assert params.initial_r2t is True and params.immediate_data is False
    payload = os.urandom(3 << 20)
    cmd = pair.command(write10(0, len(payload) // BLOCK), write=payload)
    pair.run()
    assert cmd.done and cmd.status == 0
    assert bytes(pair.device.disk[:len(payload)]) == payload
    assert pair.sent(Opcode.SCSI_COMMAND)[0].data == b""
    assert len(pair.received(Opcode.R2T)) == 3  # MaxBurstLength 1 MiB each
    assert all(len(p.data) <= 262144 for p in pair.sent(Opcode.DATA_OUT))


def test_commands_wait_for_the_cmdsn_window() -> None:
    cfg = portal()
    cfg.cmd_window = 4
    pair = Pair(cfg=cfg, auto=False)
    pair.login()
    cmds = [pair.command(read10(i, 1), read=BLOCK) for i in range(10)]
    pair.run()
    assert len(pair.ini.tasks) == 4 and len(pair.ini.queue) == 6
    while pair.held:
        pair.release()
    assert all(c.done and c.status == 0 for c in cmds)
    sns = [p.cmdsn for p in pair.sent(Opcode.SCSI_COMMAND)]
    assert sns == list(range(100, 110))


def test_check_condition_carries_sense() -> None:
    pair = Pair()
    pair.login()
    cmd = pair.command(bytes([0xEE]) + bytes(15))
    pair.run()
    assert cmd.status == 2 and cmd.sense[2] & 0x0F == 5 and cmd.sense[12] == 0x20


def test_datasn_gap_fails_the_connection() -> None:
    pair = Pair()
    pair.login()
    pair.command(read10(0, 1024), read=1024 * BLOCK)
    pair._to_target()
    out = pair.tgt.data_to_send()
    bufs = [bytes(b) for b in out]
    # drop the first Data-In (header + its 256 KiB payload): the next has DataSN 1
    for buf in bufs[2:]:
        pair.ini.receive_data(buf, 0.0)
    events = []
    while (ev := pair.ini.next_event()) is not NEED_DATA:
        events.append(ev)
    assert isinstance(events[-1], ConnectionFailed) and "DataSN 1" in events[-1].reason
    assert [c.itt for c in pair.ini.unfinished()]  # the read is still owed
