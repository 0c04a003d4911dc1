"""One iSCSI connection on the event loop: a thin shell around ``iscsi.TargetConnection``.

The connection owns its socket through a ``SocketWire`` (sockwire.py; the
NBD server's, for the same reason: an asyncio transport sends on the loop
thread, so large replies would serialise behind each other): the loop
receives straight into the core's buffer, drains its events through
``_EVENTS`` (a table by event type) and writes what the core queued.

SCSI commands start at once and eagerly (stepped by hand, as in
``util.eager``, without a wrapper coroutine on the fast path): a command the
SCSI layer answers without waiting (a page-cache hit) is answered inside the
same callback; one that waits (thread pool) completes later, in any order.
Replies produced in one callback are corked into one ``sendmsg`` (every
``FLUSH_EVERY`` events, so the initiator can start on them while we go on);
completions from other tasks set a flush that runs once per loop turn.

Large reads: a command whose data the SCSI layer may hand over by reference
(``ScsiCommand.by_reference``: no data digest, at least ``THREAD_SEND_MIN``
bytes) comes back as a ``FileSpan`` of the backing raw file and goes out
with sendfile(2) from an I/O thread; other large replies are sent from an
I/O thread too, where the copy runs without the GIL.  The wire keeps the
replies in the order the core queued them, so StatSN stays in order.
Reading pauses while more than ``WRITE_HIGH`` bytes of replies wait.

The connection's end (logout, error, peer gone, reinstated by a new login)
always passes through ``_lost``: the core forgets the session and the SCSI
layer hears ``nexus_gone``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, cast

from blockyard.block.throttle import SESSION
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
from blockyard.scsi.fastpath import ThreadedWrite
from blockyard.scsi.task import FileSpan, ScsiCommand, ScsiResult, Status, TmfFunction
from blockyard.transport.iscsi_wire import IscsiWire
from blockyard.transport.sockwire import FileRange
from blockyard.util.aio import pool
from blockyard.util.eager import run_eager

if TYPE_CHECKING:
    from blockyard.transport.iscsi_target import IscsiTarget, IscsiTargetServer

log = logging.getLogger("blockyard.iscsi")
FLUSH_EVERY = int(os.environ.get("BLOCKYARD_ISCSI_FLUSH_EVERY", "16"))
USE_SENDFILE = not os.environ.get("BLOCKYARD_NO_SENDFILE")
THREAD_SEND_MIN = 256 << 10  # replies carrying this much data are sent from an I/O thread
WRITE_HIGH = 16 << 20  # stop reading commands while this much reply data waits
WRITE_LOW = 4 << 20
# CHECK CONDITION, HARDWARE ERROR, INTERNAL TARGET FAILURE (44h/00h), fixed format
_INTERNAL_FAILURE = bytes([0x70, 0, 0x04, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x44, 0, 0, 0, 0, 0])


def _failure(cmd: ScsiCommand) -> ScsiResult:
    log.exception("iscsi: command %02x on LUN %d failed", cmd.cdb[0], cmd.lun)
    return ScsiResult(Status.CHECK_CONDITION, sense=_INTERNAL_FAILURE)


def _no_target(cmd: ScsiCommand) -> ScsiResult:
    raise RuntimeError("SCSI command before login")


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


class IscsiConnection:
    def __init__(self, server: IscsiTargetServer, sock: socket.socket) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.target: IscsiTarget | None = None
        self.reason = "peer closed the connection"
        self.closed = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self._busy = False
        self._threaded = False  # the corked replies hold a FileSpan or much data
        self._start: Callable[[ScsiCommand], Any] = _no_target
        self.session_key = "iscsi:-"  # bandwidth groups schedule per initiator (SESSION)
        self._paused = False
        self._flush_handle: asyncio.Handle | None = None
        self._written: deque[tuple[int, ThreadedWrite]] = deque()  # done on I/O threads
        self._wake_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._timer_epoch = -1  # the core's timer_epoch when the timer was last armed
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer, local = sock.getpeername(), sock.getsockname()
        self.peer = format_portal(peer[0], peer[1]) if isinstance(peer, tuple) else str(peer)
        address = format_portal(local[0], local[1]) if isinstance(local, tuple) else ""
        self.core = TargetConnection(server.portal, local_address=address,
                                     now=self.loop.time(), owner=self)
        self.core.alloc = server.payloads.get  # write buffers, recycled after threaded writes
        reader = self.core.reader  # the wire fills the core's reader directly
        self.wire = IscsiWire(sock, self.loop, reader.get_buffer, reader.buffer_updated,
                              self._lost)
        self.wire.process = self._process
        server.connections.add(self)
        log.info("iscsi: connection from %s", self.peer)
        self.wire.resume_reading()

    # ---- socket callbacks -------------------------------------------------------------
    def _lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for handle in (self._flush_handle, self._timer):
            if handle is not None:
                handle.cancel()
        core = self.core
        session = core.session
        core.connection_lost()
        if session is not None and self.target is not None:
            self.target.device.nexus_gone(session.nexus)
        who = f"{session.initiator_name} -> {session.target_name or 'discovery'}" \
            if session is not None else "not logged in"
        log.info("iscsi: connection from %s closed (%s): %s", self.peer, who,
                 f"{self.reason}: {exc}" if exc else self.reason)

    # ---- the core's events ---------------------------------------------------------------
    def _process(self) -> None:
        core = self.core
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
        if self.core.timer_epoch != self._timer_epoch:
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
            self.session_key = f"iscsi:{session.initiator_name}"
            device = self.target.device
            self._start = getattr(device, "start", device.execute)
            self.core.answer_now = getattr(device, "answer_now", None)
            self.core.by_reference_min = THREAD_SEND_MIN if USE_SENDFILE else 0
        if event.replaced is not None and event.replaced is not self:
            cast(IscsiConnection, event.replaced).kill("session reinstated by a new login")

    def _on_command_in_session(self, event: CommandReady) -> None:
        """``_on_command`` with the session's key in ``SESSION`` (a Task it starts keeps it)."""
        token = SESSION.set(self.session_key)
        try:
            self._on_command(event)
        finally:
            SESSION.reset(token)

    def _on_command(self, event: CommandReady) -> None:
        """Run the command now; if the SCSI layer has to wait, finish it in a Task."""
        cmd = event.command
        if cmd.expected_in >= THREAD_SEND_MIN and USE_SENDFILE and not self.core.dd:
            cmd.by_reference = True
        try:  # a result at once (page-cache reads), or the coroutine to step
            coro = self._start(cmd)
        except Exception:
            coro = _failure(cmd)
        if type(coro) is ScsiResult:
            self._complete(event.itt, coro)
            return
        if type(coro) is ThreadedWrite:
            self.server.threaded_writes += 1
            pool().submit(self._write_in_thread, event.itt, coro)
            return
        try:
            waiting = coro.send(None)
        except StopIteration as done:
            self._complete(event.itt, done.value)
            return
        except Exception:  # the SCSI layer maps its own errors; anything else is a bug
            self._complete(event.itt, _failure(cmd))
            return
        task = self.loop.create_task(self._finish(event, _Resume(coro, waiting)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _finish(self, event: CommandReady, rest: _Resume) -> None:
        try:
            result = await rest
        except Exception:
            result = _failure(event.command)
        if not self.closed:
            self._complete(event.itt, result)
            self._dirty()

    def _write_in_thread(self, itt: int, write: ThreadedWrite) -> None:
        """An I/O thread: the write, then a wake-up of the loop (one serves many)."""
        write.run()
        self._written.append((itt, write))  # deque.append is atomic
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self.loop.call_soon_threadsafe(self._reap_writes)
            except RuntimeError:  # the loop is gone
                pass

    def _reap_writes(self) -> None:
        self._wake_pending = False
        payloads = self.server.payloads
        written = self._written
        while written:
            itt, write = written.popleft()
            self.server.threaded_writes -= 1
            result = write.finish()
            payloads.put(write.data)  # sync_pwrite keeps no reference: recycle it
            if not self.closed:
                self._complete(itt, result)
        if not self.closed:
            self._dirty()

    def _complete(self, itt: int, result: ScsiResult) -> None:
        data = result.data
        if type(data) is FileSpan or len(data) >= THREAD_SEND_MIN:
            self._threaded = True
        self.core.complete_command(itt, result)

    def _on_tmf(self, event: TaskManagement) -> None:
        task = run_eager(self._run_tmf(event))
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run_tmf(self, event: TaskManagement) -> None:
        assert self.target is not None
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
        self.closed = True
        self.wire.pause_reading()
        self.wire.flush_and_close()  # after the queued replies are written

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
        out: list[Any] = self.core.data_to_send()
        if not out or self.wire.closed:
            return
        if self._threaded or self.core.bulky:
            self._threaded = self.core.bulky = False
            self.wire.send_threaded([FileRange(b.fd, b.offset, b.count)
                                     if type(b) is FileSpan else b for b in out])
            if self.wire.queued_bytes > WRITE_HIGH and not self._paused:
                self._paused = True
                self.wire.pause_reading()
                self.loop.call_later(0.002, self._check_backlog)
        else:
            self.wire.send(out)

    def _check_backlog(self) -> None:
        if self.closed:
            return
        if self.wire.queued_bytes > WRITE_LOW:
            self.loop.call_later(0.002, self._check_backlog)
        else:
            self._paused = False
            self.wire.resume_reading()

    def _arm_timer(self) -> None:
        self._timer_epoch = self.core.timer_epoch
        when = self.core.get_timer() if not self.closed else None
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer) if when is not None else None

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if not self.closed:
            self.core.handle_timer(self.loop.time())
            self._process()

    # ---- ending ------------------------------------------------------------------------------
    def kill(self, reason: str) -> None:
        """Close at once (session reinstatement, shutdown, cold reset of another session)."""
        self.reason = reason
        self.abort()

    def abort(self) -> None:
        self.closed = True
        self.wire.close(None)

    def request_logout(self, seconds: int) -> None:
        """Ask the initiator to log out (Async Message, event 1, §11.9.1)."""
        if not self.closed and self.core.session is not None:
            self.core.request_logout(seconds)
            self._flush()


_EVENTS: dict[type, Any] = {
    CommandReady: IscsiConnection._on_command_in_session,
    LoginComplete: IscsiConnection._on_login,
    TaskManagement: IscsiConnection._on_tmf,
    SessionClosing: IscsiConnection._on_closing,
}
