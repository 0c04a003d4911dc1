"""The asyncio iSCSI initiator: sessions to remote targets, discovery, remote LUNs.

``IscsiSession`` drives one ``iscsi.initiator_session.InitiatorSession``
(the sans-IO policy: commands, reinstatement, backoff) over a socket per
connection (``iscsi_initiator_conn.InitiatorProtocol``)::

    session = IscsiSession(parse_url("iscsi://host/iqn.../0"))
    await session.open()                      # connect + login (follows redirects)
    cmd = await session.execute(0, read16(0, 8), read_len=4096)
    await session.close()                     # logout

``execute`` may be called many times at once: commands are pipelined
within the target's CmdSN window.  When the connection drops (or the
target stops answering NOP-Out pings, or asks us to log out) the session
reconnects in the background with the same ISID, which reinstates the
session on the target, and reissues the commands whose status never came;
callers simply wait.  Only when reconnecting has failed for
``reconnect_for`` seconds do the waiting commands fail, with ``BlockError``
naming the URL and the last cause.  The log shows every drop and reconnect.

Entry points for the rest of blockyard:

* ``open_remote(url, read_only) -> RemoteLun`` (async): a remote LUN as a
  block ``Layer`` (``block/remote.py``);
* ``discover(portal) -> [(target, [addresses])]`` (async): SendTargets;
* ``probe(url) -> dict`` (async): INQUIRY, capacity, identity, keys.

Open errors are one line naming the URL: ``MediaError`` (cannot connect,
login refused, wrong CHAP secret, not a disk), ``NotFoundError`` (no such
target or LUN).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from typing import Any

from blockyard.block.remote import RemoteLun
from blockyard.errors import BlockError, MediaError, NotFoundError
from blockyard.iscsi.constants import LoginStatus
from blockyard.iscsi.initiator_command import Command
from blockyard.iscsi.initiator_config import DEFAULT_INITIATOR, InitiatorSettings, settings_for
from blockyard.iscsi.initiator_events import (
    AsyncReceived,
    CommandDone,
    ConnectionFailed,
    LoggedOut,
    LoginDone,
    LoginFailed,
    LoginRedirected,
    TextDone,
    TmfDone,
)
from blockyard.iscsi.initiator_login import LoginError, LoginResult
from blockyard.iscsi.initiator_session import InitiatorSession, SessionState
from blockyard.iscsi.pdu import Buffer
from blockyard.iscsi.url import IscsiUrl, parse_portal, parse_url
from blockyard.transport.iscsi_initiator_conn import InitiatorProtocol, open_connection
from blockyard.transport.iscsi_initiator_lun import inspect_lun
from blockyard.transport.iscsi_initiator_spare import MIN as SPARE_MIN
from blockyard.transport.iscsi_initiator_spare import SpareBuffers

log = logging.getLogger("blockyard.iscsi.initiator")
MAX_REDIRECTS = 4
DEFAULT_RECONNECT = 60.0


class _Refused(Exception):
    def __init__(self, error: LoginError) -> None:
        super().__init__(str(error))
        self.error = error


class IscsiSession:
    """See the module docstring."""

    def __init__(self, url: IscsiUrl, settings: InitiatorSettings | None = None, *,
                 reconnect_for: float | None = None) -> None:
        self.url = url
        self.display = url.display or f"iscsi://{url.portal}/{url.target}"
        self.settings = settings or settings_for(url)
        bound = reconnect_for if reconnect_for is not None else url.reconnect
        self.core = InitiatorSession(self.settings, reconnect_for=DEFAULT_RECONNECT
                                     if bound is None else bound)
        self.loop = asyncio.get_running_loop()
        self.proto: InitiatorProtocol | None = None
        self.result: LoginResult | None = None
        self.address = (url.host, url.port)
        self._login: asyncio.Future[Any] | None = None
        self._texts: dict[int, asyncio.Future[TextDone]] = {}
        self._closing: asyncio.Future[None] | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self.spare = SpareBuffers()

    # ---- open / close --------------------------------------------------------------------
    async def open(self) -> LoginResult:
        """Connect and log in once (following redirects); errors name the URL."""
        try:
            return await self._connect_following_redirects()
        except _Refused as exc:
            status = exc.error.status
            cls = NotFoundError if status in (LoginStatus.NOT_FOUND,
                                              LoginStatus.TARGET_REMOVED) else MediaError
            raise cls(f"{self.display}: login failed: {exc.error}") from None
        except (TimeoutError, OSError) as exc:
            raise MediaError(f"{self.display}: {_why(exc, self.settings.login_timeout)}") \
                from None

    async def _connect_following_redirects(self) -> LoginResult:
        self.address = (self.url.host, self.url.port)
        for _ in range(MAX_REDIRECTS + 1):
            outcome = await self._connect_once()
            if isinstance(outcome, LoginResult):
                return outcome
            host, port = parse_portal(outcome.address)
            log.info("iscsi: %s: redirected to %s:%d", self.display, host, port)
            self.address = (host, port)
        raise MediaError(f"{self.display}: more than {MAX_REDIRECTS} login redirects")

    async def _connect_once(self) -> Any:
        """One TCP connection and login: a LoginResult or a LoginRedirect."""
        core = self.core.connect(self.loop.time())
        self._login = self.loop.create_future()
        host, port = self.address
        timeout = self.settings.login_timeout
        proto = await asyncio.wait_for(open_connection(core, self._on_event, host, port),
                                       timeout)
        self.proto = proto
        try:
            outcome = await asyncio.wait_for(asyncio.shield(self._login), timeout)
        except BaseException:
            proto.abort()
            raise
        if isinstance(outcome, LoginResult):
            self.result = outcome
            self.core.login_done(outcome)
            proto.soon()  # the reissued commands go out now
        return outcome

    async def close(self, timeout: float = 5.0) -> None:
        """Log out (bounded by ``timeout``) and close; pending commands fail."""
        if self._reconnect is not None:
            self._reconnect.cancel()
        state = self.core.state
        self.core.close()
        proto = self.proto
        if proto is not None and not proto.closed and state is SessionState.UP:
            self._closing = self.loop.create_future()
            proto.core.logout()
            proto.soon()
            try:
                await asyncio.wait_for(asyncio.shield(self._closing), timeout)
            except TimeoutError:
                pass
        if proto is not None:
            proto.abort()
        self._resolve(self.core.give_up(f"{self.display}: session closed"))

    # ---- commands ---------------------------------------------------------------------------
    async def execute(self, lun: int, cdb: bytes, *, data_out: Buffer | None = None,
                      read_len: int = 0, into: memoryview | None = None,
                      timeout: float | None = None) -> Command:
        """Run one SCSI command; the finished Command (status, sense, data).

        A transport-level failure (timed out and aborted, rejected, session
        lost for good) raises BlockError naming the URL.
        """
        return await self.start(lun, cdb, data_out=data_out, read_len=read_len, into=into,
                                timeout=timeout)

    def start(self, lun: int, cdb: bytes, *, data_out: Buffer | None = None,
              read_len: int = 0, into: memoryview | None = None,
              timeout: float | None = None) -> asyncio.Future[Command]:
        """``execute`` without a coroutine (one frame less per resume): the future.

        Without ``into``, large reads land in a recycled buffer (``iscsi_initiator_spare``).
        """
        if into is None and read_len >= SPARE_MIN:
            into = memoryview(self.spare.take(read_len))
        cmd = Command(cdb, lun, data_out, read_len, into, timeout)
        loop, core = self.loop, self.core
        fut: asyncio.Future[Command] = loop.create_future()
        cmd.token = fut
        now = loop.time()
        if core.state is SessionState.FAILED and core.revive(now):
            log.warning("iscsi: %s: new request after the session was lost; reconnecting",
                        self.display)
            self._reconnect = loop.create_task(self._reconnect_loop(now))
        core.submit(cmd, now)
        if cmd.done:  # the session has failed or is closed
            self._resolve([cmd])
            return fut
        proto = self.proto
        if proto is not None and core.conn is not None and not proto.closed:
            proto.soon()
        return fut

    async def send_targets(self, value: str = "All") -> list[tuple[str, str]]:
        proto = self.proto
        if proto is None or proto.closed:
            raise MediaError(f"{self.display}: not connected")
        itt = proto.core.send_targets(value)
        fut: asyncio.Future[TextDone] = self.loop.create_future()
        self._texts[itt] = fut
        proto.soon()
        done = await asyncio.wait_for(fut, self.settings.login_timeout)
        if done.error:
            raise MediaError(f"{self.display}: SendTargets failed: {done.error}")
        return done.pairs

    # ---- events from the connection ------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        _EVENTS[type(event)](self, event)

    def _on_command_done(self, event: CommandDone) -> None:
        cmd = event.command
        self.core.command_done(cmd)
        self._resolve([cmd])

    def _resolve(self, cmds: list[Command]) -> None:
        """Finish the futures of ``cmds``: the Command, or BlockError when it has no outcome."""
        for cmd in cmds:
            fut, cmd.token = cmd.token, None  # no future <-> command cycle: buffers go with it
            if fut is None or fut.done():
                continue
            if cmd.error:
                fut.set_exception(_block_error(self.display, cmd))
            else:
                fut.set_result(cmd)

    def _on_login_done(self, event: LoginDone) -> None:
        if self._login is not None and not self._login.done():
            self._login.set_result(event.result)

    def _on_login_failed(self, event: LoginFailed) -> None:
        if self._login is not None and not self._login.done():
            self._login.set_exception(_Refused(event.error))

    def _on_redirect(self, event: LoginRedirected) -> None:
        if self._login is not None and not self._login.done():
            self._login.set_result(event.redirect)

    def _on_text(self, event: TextDone) -> None:
        fut = self._texts.pop(event.itt, None)
        if fut is not None and not fut.done():
            fut.set_result(event)

    def _on_tmf(self, event: TmfDone) -> None:
        log.warning("iscsi: %s: ABORT TASK answered with response %d", self.display,
                    event.response)

    def _on_async(self, event: AsyncReceived) -> None:
        log.warning("iscsi: %s: target sent asynchronous event %d (parameters %d, %d, %d)",
                    self.display, event.event, event.param1, event.param2, event.param3)

    def _on_logged_out(self, event: LoggedOut) -> None:
        if self._closing is not None:
            if not self._closing.done():
                self._closing.set_result(None)
            return
        self._connection_ended("the target asked us to log out", float(event.time2wait))

    def _on_failed(self, event: ConnectionFailed) -> None:
        if self._login is not None and not self._login.done():
            self._login.set_exception(ConnectionError(event.reason))
            return
        if self._closing is not None:
            if not self._closing.done():
                self._closing.set_result(None)
            return
        self._connection_ended(event.reason, event.time2wait)

    # ---- reconnecting ---------------------------------------------------------------------
    def _connection_ended(self, reason: str, time2wait: float | None) -> None:
        if self.core.state is not SessionState.UP:
            return
        when = self.core.connection_ended(self.loop.time(), reason, time2wait)
        pending = len(self.core.pending)
        if when is None:
            self._give_up()
            return
        log.warning("iscsi: %s: %s; reconnecting in %.1f s (%d commands to reissue)",
                    self.display, reason, max(0.0, when - self.loop.time()), pending)
        self._reconnect = self.loop.create_task(self._reconnect_loop(when))

    async def _reconnect_loop(self, when: float | None) -> None:
        while when is not None:
            await asyncio.sleep(max(0.0, when - self.loop.time()))
            try:
                await self._connect_following_redirects()
            except _Refused as exc:
                when = self.core.login_refused(self.loop.time(), exc.error)
            except (TimeoutError, OSError, MediaError) as exc:
                why = _why(exc, self.settings.login_timeout)
                when = self.core.connection_ended(self.loop.time(), why)
            else:
                log.warning("iscsi: %s: reconnected: session reinstated (ISID 0x%012x), "
                            "%d commands reissued", self.display, self.core.isid,
                            len(self.core.pending))
                return
            if when is not None:
                log.warning("iscsi: %s: reconnect failed (%s); next try in %.1f s",
                            self.display, self.core.last_error,
                            max(0.0, when - self.loop.time()))
        self._give_up()

    def _give_up(self) -> None:
        bound = self.core.reconnect_for
        why = f"{self.display}: session lost ({self.core.last_error}); " \
              f"reconnecting failed for {bound:g} s"
        log.error("iscsi: %s", why)
        self._resolve(self.core.give_up(why))


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, OSError) and exc.errno:
        return f"cannot connect: {os.strerror(exc.errno)}"
    return str(exc) or type(exc).__name__


def _block_error(display: str, cmd: Command) -> BlockError:
    err = errno.ETIMEDOUT if "no answer within" in cmd.error else errno.EIO
    op = f"opcode {cmd.cdb[0]:02x}h" if cmd.cdb else "command"
    message = cmd.error if cmd.error.startswith(display) else f"{display}: {op}: {cmd.error}"
    return BlockError(err, message)


_EVENTS: dict[type, Any] = {
    CommandDone: IscsiSession._on_command_done,
    LoginDone: IscsiSession._on_login_done,
    LoginFailed: IscsiSession._on_login_failed,
    LoginRedirected: IscsiSession._on_redirect,
    TextDone: IscsiSession._on_text,
    TmfDone: IscsiSession._on_tmf,
    AsyncReceived: IscsiSession._on_async,
    LoggedOut: IscsiSession._on_logged_out,
    ConnectionFailed: IscsiSession._on_failed,
}


async def discover(portal: str, initiator_name: str = DEFAULT_INITIATOR,
                   timeout: float = 10.0) -> list[tuple[str, list[str]]]:
    """SendTargets=All in a Discovery session: [(target name, [portal addresses])]."""
    host, port = parse_portal(portal)
    url = IscsiUrl(host, port, display=f"iscsi://{host}:{port}")
    session = IscsiSession(url, InitiatorSettings(initiator_name=initiator_name,
                                                  login_timeout=timeout, nop_interval=0))
    await session.open()
    try:
        pairs = await session.send_targets("All")
    finally:
        await session.close()
    targets: list[tuple[str, list[str]]] = []
    for key, value in pairs:
        if key == "TargetName":
            targets.append((value, []))
        elif key == "TargetAddress" and targets:
            targets[-1][1].append(value)
    return targets


async def open_remote(url: str, read_only: bool = False, *,
                      reconnect_for: float | None = None, **settings: Any) -> RemoteLun:
    """A remote LUN as a block Layer (``block.remote.RemoteLun``); see the module docstring.

    ``settings`` override ``InitiatorSettings`` fields (``nop_interval``,
    ``command_timeout``, ``initiator_name`` ...) over what the URL says.
    """
    parsed = parse_url(url)
    session = IscsiSession(parsed, settings_for(parsed, **settings), reconnect_for=reconnect_for)
    await session.open()
    try:
        props = await inspect_lun(session, parsed.lun)
        props.negotiated = dict(session.result.negotiated) if session.result else {}
        return RemoteLun(session, parsed.lun, props, read_only=read_only)
    except BaseException:
        await session.close()
        raise


async def probe(url: str) -> dict[str, Any]:
    """What ``blockyard iscsi probe`` shows: identity, capacity, limits, negotiated keys."""
    lun = await open_remote(url, read_only=True, reconnect_for=0)
    try:
        info = lun.info()
        p = lun.props
        return {"url": info.path, "vendor": p.inquiry.vendor, "product": p.inquiry.product,
                "revision": p.inquiry.revision, "identity": lun.uuid, "serial": p.serial,
                "size": lun.size, "block_size": lun.block_size, "blocks": p.blocks,
                "write_protected": p.write_protected, "fua": p.dpofua, "thin": p.lbpme,
                "unmap": p.lbpme and p.provisioning.lbpu, "lba_status": p.lba_status,
                "max_transfer_blocks": p.limits.max_transfer, "negotiated": p.negotiated}
    finally:
        await lun.close()
