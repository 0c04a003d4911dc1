"""The initiator session across connections: commands, reinstatement, reconnect policy.

Theory of operation.  A session is one ISID towards one target.  It owns
every submitted command until its status arrives, and at most one
``InitiatorConnection`` at a time (MaxConnections=1).  When a connection
ends without a logout we asked for -- dropped, dead peer, protocol error,
a logout the target requested -- the session logs in again with the *same
ISID and TSIH 0*, which makes the target reinstate (end) the old session
(RFC 7143 §6.3.5), and hands the new connection the commands whose status
never came, in their original order.  Commands that completed are never
sent again, so nothing is lost and nothing is doubled; a reissued write
rewrites the same bytes (idempotent at block level).

The policy is a table of states::

    state     event                        next
    IDLE      connect()                    LOGIN
    LOGIN     login_done()                 UP (pending commands go to the connection)
    LOGIN     connection_ended / refused   DOWN, or FAILED past the bound / on a final error
    UP        connection_ended()           DOWN (retry at once or after Time2Wait)
    DOWN      connect()                    LOGIN
    FAILED    revive() (a new request)     DOWN: another round of retries
    any       close()                      CLOSED

Retries: the first comes after the Time2Wait the target negotiated or
announced (§13.15, §11.9.1: the old session must be gone before the new
one acts on the same blocks), then 0.25 s, 0.5 s, 1 s ... at most 5 s
apart, for at most ``reconnect_for`` seconds after the drop; then every
pending command fails with the last cause.  The next request after that
starts another such round (the target may be back), so a medium recovers
without being reopened.  A login refused for good
(status class 2: wrong CHAP secret, no such target, not authorized) fails at
once: retrying would not change the answer.
"""

from __future__ import annotations

import itertools
from enum import Enum

from blockyard.iscsi.initiator import InitiatorConnection
from blockyard.iscsi.initiator_command import Command
from blockyard.iscsi.initiator_config import InitiatorSettings, random_isid
from blockyard.iscsi.initiator_events import InitiatorState
from blockyard.iscsi.initiator_login import LoginError, LoginResult

MAX_BACKOFF = 5.0
FIRST_BACKOFF = 0.25


class SessionState(Enum):
    IDLE = "idle"
    LOGIN = "login"
    UP = "up"
    DOWN = "down"
    FAILED = "failed"
    CLOSED = "closed"


class InitiatorSession:
    def __init__(self, settings: InitiatorSettings, *, isid: int | None = None,
                 reconnect_for: float = 60.0) -> None:
        self.settings = settings
        self.isid = random_isid() if isid is None else isid
        self.reconnect_for = reconnect_for
        self.state = SessionState.IDLE
        self.conn: InitiatorConnection | None = None
        self.pending: dict[int, Command] = {}
        self.result: LoginResult | None = None
        self.down_since: float | None = None
        self.failures = 0
        self.reconnects = 0
        self.last_error = ""
        self._next_cmdsn: int | None = None
        self._seq = itertools.count()

    # ---- connections -----------------------------------------------------------------
    def connect(self, now: float) -> InitiatorConnection:
        """A new connection logging in with our ISID and TSIH 0 (reinstatement, §6.3.5)."""
        if self.state in (SessionState.FAILED, SessionState.CLOSED):
            raise RuntimeError(f"session is {self.state.value}")
        self.conn = InitiatorConnection(self.settings, self.isid, now=now,
                                        cmdsn=self._next_cmdsn)
        self.state = SessionState.LOGIN
        for cmd in sorted(self.pending.values(), key=lambda c: c.seq):
            self.conn.submit(cmd, now)
        return self.conn

    def login_done(self, result: LoginResult) -> None:
        if self.down_since is not None:
            self.reconnects += 1
        self.result = result
        self.state = SessionState.UP
        self.down_since = None
        self.failures = 0

    def connection_ended(self, now: float, reason: str,
                         time2wait: float | None = None) -> float | None:
        """The connection is gone; when to try the next one (None: give up)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self._next_cmdsn = conn.cmdsn
            conn.unfinished()  # still in self.pending; the next connection reissues them
        if self.state is SessionState.CLOSED:
            return None
        was_up = self.state is SessionState.UP
        self.last_error = reason
        if self.down_since is None:
            self.down_since = now
        self.state = SessionState.DOWN
        self.failures += 1
        if was_up:
            wait = time2wait if time2wait is not None else float(
                self.result.params.default_time2wait if self.result else 0)
        else:
            wait = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self.failures - 1))
        when = now + wait
        if when > self.down_since + self.reconnect_for:
            self.state = SessionState.FAILED
            return None
        return when

    def login_refused(self, now: float, error: LoginError) -> float | None:
        """A login answered with an error: class 2 is final, anything else is retried."""
        final = error.status is None or error.status >> 8 == 2
        if final:
            self.conn = None
            self.last_error = f"login failed: {error}"
            self.state = SessionState.FAILED
            return None
        return self.connection_ended(now, f"login failed: {error}")

    def revive(self, now: float) -> bool:
        """A new request after the session FAILED: start another bounded reconnect round."""
        if self.state is not SessionState.FAILED:
            return False
        self.state = SessionState.DOWN
        self.down_since, self.failures = now, 0
        return True

    # ---- commands ----------------------------------------------------------------------
    def submit(self, cmd: Command, now: float) -> None:
        if self.state in (SessionState.FAILED, SessionState.CLOSED):
            cmd.fail(self.last_error or f"session {self.state.value}")
            return
        cmd.seq = next(self._seq)
        self.pending[cmd.seq] = cmd
        conn = self.conn
        if conn is not None and conn.state in (InitiatorState.LOGIN, InitiatorState.FULL_FEATURE):
            conn.submit(cmd, now)  # else it waits in ``pending`` for the next connection

    def command_done(self, cmd: Command) -> None:
        self.pending.pop(cmd.seq, None)

    def give_up(self, why: str) -> list[Command]:
        """Fail every pending command with ``why``; the caller reports them."""
        failed = sorted(self.pending.values(), key=lambda c: c.seq)
        self.pending.clear()
        self.last_error = why
        for cmd in failed:
            cmd.fail(why)
        if self.state is not SessionState.CLOSED:
            self.state = SessionState.FAILED
        return failed

    def close(self) -> None:
        self.state = SessionState.CLOSED
