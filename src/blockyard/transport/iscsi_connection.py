"""One iSCSI connection on the event loop: a thin shell around ``iscsi.TargetConnection``.

A ``BufferedProtocol`` receives straight into the core's buffer, drains its
events through ``_EVENTS`` (a table by event type) and writes what the core
queued.  SCSI commands start at once and eagerly (stepped by hand, as in
``util.eager``, but without a wrapper coroutine on the fast path):
a command the SCSI layer answers without waiting (a page-cache hit) is
answered inside the same callback; one that waits (thread pool) completes
later, in any order.  Replies produced in one callback go out in one
``writelines``; completions from other tasks set a flush that runs once per
loop turn.  Reading pauses while the socket's write buffer is full.

The connection's end (logout, error, peer gone, reinstated by a new login)
always passes through ``connection_lost``: the core forgets the session and
the SCSI layer hears ``nexus_gone``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any, cast

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi import (
    NEED_DATA,
    CommandReady,
    LoginComplete,
    SessionClosing,
    TargetConnection,
    TaskManagement,
)
from blockyard.iscsi.discovery import format_portal
from blockyard.scsi.task import ScsiCommand, ScsiResult, Status, TmfFunction
from blockyard.util.eager import run_eager

if TYPE_CHECKING:
    from blockyard.transport.iscsi_target import IscsiTarget, IscsiTargetServer

log = logging.getLogger("blockyard.iscsi")
# CHECK CONDITION, HARDWARE ERROR, INTERNAL TARGET FAILURE (44h/00h), fixed format
FLUSH_EVERY = int(os.environ.get("BLOCKYARD_ISCSI_FLUSH_EVERY", "16"))
_INTERNAL_FAILURE = bytes([0x70, 0, 0x04, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x44, 0, 0, 0, 0, 0])


def _failure(cmd: ScsiCommand) -> ScsiResult:
    log.exception("iscsi: command %02x on LUN %d failed", cmd.cdb[0], cmd.lun)
    return ScsiResult(Status.CHECK_CONDITION, sense=_INTERNAL_FAILURE)


class _Resume:
    """Awaitable that continues, inside a Task, a coroutine we started by hand."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro, self.first = coro, first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        self.first = None
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation goes into the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class IscsiConnection(asyncio.BufferedProtocol):
    def __init__(self, server: IscsiTargetServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.core: TargetConnection | None = None
        self.transport: asyncio.Transport | None = None
        self.target: IscsiTarget | None = None
        self.peer = "?"
        self.reason = "peer closed the connection"
        self.closed = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self._busy = False
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    # ---- asyncio callbacks ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.peer = format_portal(peer[0], peer[1]) if isinstance(peer, tuple) else str(peer)
        address = format_portal(local[0], local[1]) if isinstance(local, tuple) else ""
        self.core = TargetConnection(self.server.portal, local_address=address,
                                     now=self.loop.time(), owner=self)
        self.transport.set_write_buffer_limits(high=4 << 20)
        self.server.connections.add(self)
        log.info("iscsi: connection from %s", self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for handle in (self._flush_handle, self._timer):
            if handle is not None:
                handle.cancel()
        core = self.core
        session = core.session if core is not None else None
        if core is not None:
            core.connection_lost()
        if session is not None and self.target is not None:
            self.target.device.nexus_gone(session.nexus)
        who = f"{session.initiator_name} -> {session.target_name or 'discovery'}" \
            if session is not None else "not logged in"
        log.info("iscsi: connection from %s closed (%s): %s", self.peer, who,
                 f"{self.reason}: {exc}" if exc else self.reason)

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self.core is not None
        return self.core.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        assert self.core is not None
        self.core.buffer_updated(nbytes)
        self._process()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # ---- the core's events ---------------------------------------------------------------
    def _process(self) -> None:
        core = self.core
        assert core is not None
        self._busy = True
        handled = 0
        try:
            while not self.closed:
                event = core.next_event()
                if event is NEED_DATA:
                    break
                _EVENTS[type(event)](self, event)
                handled += 1
                if handled % FLUSH_EVERY == 0:
                    self._flush()  # let the initiator start on these while we go on
        except RemoteProtocolError as exc:
            self.reason = f"protocol error: {exc}"
            self._flush()
            self.abort()
            return
        finally:
            self._busy = False
        self._flush()
        self._arm_timer()

    def _on_login(self, event: LoginComplete) -> None:
        session = event.session
        p = session.params
        log.debug("iscsi: %s logged in to %s from %s (tsih %d, HeaderDigest=%s, DataDigest=%s,"
                  " MaxRecvDataSegmentLength %d/%d, MaxBurstLength %d, InitialR2T=%s,"
                  " ImmediateData=%s)", session.initiator_name,
                  session.target_name or "discovery", self.peer, session.tsih,
                  p.header_digest, p.data_digest, p.max_recv_data_segment,
                  p.peer_max_recv_data_segment, p.max_burst_length, p.initial_r2t,
                  p.immediate_data)
        if not session.discovery:
            self.target = self.server.targets[session.target_name]
        if event.replaced is not None and event.replaced is not self:
            cast(IscsiConnection, event.replaced).kill("session reinstated by a new login")

    def _on_command(self, event: CommandReady) -> None:
        """Run the command now; if the SCSI layer has to wait, finish it in a Task."""
        assert self.target is not None and self.core is not None
        coro = self.target.device.execute(event.command)
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            self.core.complete_command(event.itt, done.value)
            return
        except Exception:  # the SCSI layer maps its own errors; anything else is a bug
            self.core.complete_command(event.itt, _failure(event.command))
            return
        task = self.loop.create_task(self._finish(event, _Resume(coro, waiting)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _finish(self, event: CommandReady, rest: _Resume) -> None:
        try:
            result = await rest
        except Exception:
            result = _failure(event.command)
        if self.core is not None and not self.closed:
            self.core.complete_command(event.itt, result)
            self._dirty()

    def _on_tmf(self, event: TaskManagement) -> None:
        task = run_eager(self._run_tmf(event))
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run_tmf(self, event: TaskManagement) -> None:
        assert self.target is not None and self.core is not None
        session = self.core.session
        assert session is not None
        response = event.response
        if event.function != TmfFunction.ABORT_TASK:
            answer = await self.target.device.task_management(
                TmfFunction(event.function), session.nexus, event.lun)
            response = int(answer) if answer is not None else response
        if self.closed:
            return
        self.core.complete_tmf(event.itt, response)
        if event.function == TmfFunction.TARGET_COLD_RESET and response == 0:
            self.server.drop_target_sessions(session.target_name, "target cold reset", self)
        self._dirty()

    def _on_closing(self, event: SessionClosing) -> None:
        self.reason = event.reason
        self._flush()
        if self.transport is not None:
            self.transport.close()  # after the queued bytes are written
        self.closed = True

    # ---- output and timers ------------------------------------------------------------------
    def _dirty(self) -> None:
        """Something completed outside ``_process``: drain and write once this loop turn."""
        if not self._busy and self._flush_handle is None and not self.closed:
            self._flush_handle = self.loop.call_soon(self._process_soon)

    def _process_soon(self) -> None:
        self._flush_handle = None
        if not self.closed:
            self._process()

    def _flush(self) -> None:
        self._flush_handle = None
        if self.core is None or self.transport is None:
            return
        out = self.core.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.writelines(out)

    def _arm_timer(self) -> None:
        when = self.core.get_timer() if self.core is not None and not self.closed else None
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer) if when is not None else None

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self.core is not None and not self.closed:
            self.core.handle_timer(self.loop.time())
            self._process()

    # ---- ending ------------------------------------------------------------------------------
    def kill(self, reason: str) -> None:
        """Close at once (session reinstatement, shutdown, cold reset of another session)."""
        self.reason = reason
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def request_logout(self, seconds: int) -> None:
        """Ask the initiator to log out (Async Message, event 1, §11.9.1)."""
        if self.core is not None and not self.closed and self.core.session is not None:
            self.core.request_logout(seconds)
            self._flush()


_EVENTS: dict[type, Any] = {
    CommandReady: IscsiConnection._on_command,
    LoginComplete: IscsiConnection._on_login,
    TaskManagement: IscsiConnection._on_tmf,
    SessionClosing: IscsiConnection._on_closing,
}
