"""The asyncio NBD server: a thin shell around ``nbd.server.ServerConnection``.

Per connection, a ``SocketWire`` (see sockwire.py for why not an asyncio
transport) receives straight into the core's buffer; the connection drains
the core's events, runs each request against the export's block
layer and writes the reply.  Requests are pipelined: each one is started at
once and eagerly (``util.eager``), so a page-cache hit is answered inside the
same callback, while a request that has to wait (thread pool, throttle)
finishes later and its reply goes out whenever it is ready (replies may be
out of order; proto.md, "Transmission").  Replies produced in one callback
are corked into one ``sendmsg``; replies completed later, each from its own
callback (a remote LUN's answers resolving futures), are batched by
``SocketWire.send_soon`` into one ``sendmsg`` at the end of the loop turn.
A request that waits is resumed from the done-callbacks of the futures it
awaits (``util.eager.drive_eager``), not wrapped in a Task.  Large requests
are served from I/O threads (nbd_large.py), so the copies run without the GIL.

Back-pressure: the bytes of requests in flight are counted; above
``max_queued`` the connection stops reading until they drain, and it also
stops reading while more than ``WRITE_HIGH`` bytes of replies are queued.

Shutdown (``NbdServer.stop``): stop accepting; each connection stops taking
new requests (answered ESHUTDOWN), in-flight requests finish or fail with
ESHUTDOWN after ``grace`` seconds, layers are flushed, sockets closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections import deque
from typing import Any

from blockyard.block.layer import Layer
from blockyard.block.throttle import SESSION
from blockyard.block.writemode import MediumHub, PolicyError
from blockyard.errors import BlockError, BlockyardError, RemoteProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd import replies
from blockyard.nbd.events import (
    NEED_DATA,
    Disconnect,
    ExportQuery,
    ListQuery,
    Request,
)
from blockyard.nbd.server import ServerConnection, State
from blockyard.transport.bufpool import PayloadPool
from blockyard.transport.listen import accept_forever, open_listener
from blockyard.transport.nbd_exports import Export, ExportTable
from blockyard.transport.nbd_large import LargeRequests
from blockyard.transport.nbd_ops import COMMAND_TABLE
from blockyard.transport.sockwire import SocketWire
from blockyard.util.aio import pool
from blockyard.util.eager import Driven, drive_eager

__all__ = ["Export", "ExportTable", "NbdConnection", "NbdServer"]

log = logging.getLogger("blockyard.nbd")
TF = c.TransmissionFlag
_READ = int(c.Cmd.READ)
USE_SENDFILE = not os.environ.get("BLOCKYARD_NO_SENDFILE")
THREAD_SEND_MIN = 256 << 10  # read replies this big are sent from an I/O thread
THREAD_WRITE_MIN = 128 << 10  # writes this big (to a raw file) run on an I/O thread
_WRITE = int(c.Cmd.WRITE)
WRITE_HIGH = 32 << 20  # stop reading requests while this much reply data is queued
WRITE_LOW = 8 << 20


class NbdConnection(LargeRequests):
    def __init__(self, server: NbdServer, sock: socket.socket, peer: str) -> None:
        self.server = server
        self.core = ServerConnection()
        self.export: Export | None = None
        self.layer: Layer | None = None  # this session's view of the export
        self.session: MediumHub | None = None
        self.peer = peer
        self.client = peer.rsplit(":", 1)[0]  # identity for write modes: the address
        self.session_key = f"nbd:{peer}"  # one scheduling queue per connection
        self.inflight: dict[int, int] = {}  # id(request) -> bytes it holds
        self.inflight_bytes = 0
        self.tasks: set[Driven] = set()  # requests waiting for their layer
        self.closed = False
        self.draining = False
        self._cork: list[Any] | None = None
        self._paused_for: set[str] = set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.gone = asyncio.Event()
        self._finished: deque[Request] = deque()  # large reads completed on I/O threads
        self._wake_pending = False
        self.loop = asyncio.get_running_loop()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.core.alloc_payload = server.payloads.get
        self.wire = SocketWire(sock, self.loop, self.core.get_buffer, self._received,
                               self._lost)
        server.connections.add(self)
        log.info("nbd: connection from %s", self.peer)
        self.wire.send(self.core.data_to_send())  # type: ignore[arg-type]
        self.wire.resume_reading()

    def _lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gone.set()
        if self.session is not None:
            self.loop.create_task(self.session.release(self.client))
            self.session = None
        self.server.connections.discard(self)
        name = self.export.name if self.export else "-"
        log.info("nbd: connection from %s closed (export %s)%s", self.peer, name,
                 f": {exc}" if exc else "")

    def _received(self, nbytes: int) -> None:
        self.core.buffer_updated(nbytes)
        self._process()

    # ---- event loop of the core ------------------------------------------------------
    def _process(self) -> None:
        cork: list[Any] = []
        self._cork = cork
        try:
            while not self.closed and not self._paused_for:
                event = self.core.next_event()
                if event is NEED_DATA:
                    break
                if type(event) is Request:
                    self._start_request(event)
                else:
                    self._handshake_event(event)
                if self.core.state is State.CLOSED:
                    break
        except RemoteProtocolError as exc:
            log.warning("nbd: %s: protocol error, disconnecting: %s", self.peer, exc)
            self._flush_cork(cork)
            self.wire.flush_and_close()
            return
        self._flush_cork(cork)
        if self.core.state is State.CLOSED and not self.closed:
            self._close_when_idle()

    def _flush_cork(self, cork: list[Any]) -> None:
        self._cork = None
        cork.extend(self.core.data_to_send())
        if cork:
            self.wire.send(cork)

    def _send(self, bufs: Any, large: bool = False) -> None:
        cork = self._cork
        if type(bufs) is not list:
            bufs = [bufs]
        if large:
            self.wire.send_threaded(bufs)
        elif cork is not None:
            cork.extend(bufs)
        else:
            self.wire.send_soon(bufs)

    # ---- handshake events --------------------------------------------------------------
    def _handshake_event(self, event: object) -> None:
        if isinstance(event, ExportQuery):
            export = self.server.exports.lookup(event.name)
            if export is None:
                self.core.reject_export(c.Rep.ERR_UNKNOWN, f"no export named {event.name!r}")
            elif self.draining:
                self.core.reject_export(c.Rep.ERR_SHUTDOWN, "server is shutting down")
            elif event.go and export.hub is not None:
                self._pause("session")
                self.loop.create_task(self._open_session(export))
            else:
                self.core.accept_export(export.spec())
                if event.go:
                    self._use(export, export.layer)
        elif isinstance(event, ListQuery):
            self.core.send_list(self.server.exports.listing())
        elif isinstance(event, Disconnect):
            log.debug("nbd: %s: %s", self.peer, event.reason)

    def _use(self, export: Export, layer: Layer) -> None:
        self.export = export
        self.layer = layer
        log.info("nbd: %s uses export %s", self.peer, export.name)

    async def _open_session(self, export: Export) -> None:
        """Ask the medium's write-mode hub for this client's layer (may refuse)."""
        assert export.hub is not None
        try:
            layer = await export.hub.acquire(self.client)
        except PolicyError as exc:
            log.info("nbd: %s refused export %s: %s", self.peer, export.name, exc)
            self.core.reject_export(c.Rep.ERR_POLICY, str(exc))
        except (BlockyardError, OSError) as exc:  # e.g. its differencing image cannot open
            log.warning("nbd: %s cannot have export %s: %s", self.peer, export.name, exc)
            self.core.reject_export(c.Rep.ERR_UNKNOWN, str(exc))
        else:
            if self.closed:
                await export.hub.release(self.client)
                return
            self.session = export.hub
            self.core.accept_export(export.spec(layer))
            self._use(export, layer)
        self.wire.send(self.core.data_to_send())  # type: ignore[arg-type]
        self._resume("session")

    # ---- requests ----------------------------------------------------------------------
    def _start_request(self, req: Request) -> None:
        export = self.export
        assert export is not None and self.layer is not None
        if self.draining:
            self._send(replies.error(req.cookie, errno.ESHUTDOWN, self.core.negotiated.structured,
                                     "server is shutting down"))
            return
        size = req.length if req.cmd <= 1 else 0
        self.inflight_bytes += size
        if self.inflight_bytes > self.server.max_queued:
            self._pause("queued-bytes")
        if self.wire.queued_bytes > WRITE_HIGH:
            self._pause("write-buffer")
            self.loop.call_later(0.005, self._check_write_buffer)
        self.idle.clear()
        self.inflight[id(req)] = size
        if req.cmd == _WRITE and req.length >= THREAD_WRITE_MIN and self.layer.sync_pwrite:
            pool().submit(self._write_in_thread, req, self.layer.sync_pwrite)
            return
        if req.cmd == _READ and req.length >= THREAD_SEND_MIN:
            layer = self.layer
            if layer.sendfile_fd is not None and USE_SENDFILE:
                self._read_sendfile(req, export, layer.sendfile_fd)
                return
            if layer.sync_map is not None and USE_SENDFILE and \
                    self._read_mapped(req, export, layer.sync_map):
                return
            if layer.sync_pread is not None:
                pool().submit(self._read_in_thread, req, export, layer.sync_pread)
                return
        token = SESSION.set(self.session_key)  # bandwidth groups schedule per session
        try:
            task = drive_eager(self._run(req, export, self.layer))
        finally:
            SESSION.reset(token)
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, req: Request, export: Export, layer: Layer) -> None:
        structured = self.core.negotiated.structured
        try:
            if req.cmd == _READ:
                data = await layer.pread(req.offset, req.length)
                if structured:
                    out: Any = replies.read_structured(req.cookie, req.offset, data)
                else:
                    out = replies.read_simple(req.cookie, data)
            else:
                out = await COMMAND_TABLE[req.cmd](self, layer, req)
        except BlockError as exc:
            out = replies.error(req.cookie, exc.errno, structured, str(exc))
        except asyncio.CancelledError:
            out = replies.error(req.cookie, errno.ESHUTDOWN, structured, "server shut down")
        except Exception:  # a bug must cost one request, not the server
            log.exception("nbd: %s: request %r failed", self.peer, req)
            out = replies.error(req.cookie, errno.EIO, structured, "internal error")
        stats = export.stats
        stats["requests"] += 1
        stats["bytes"] += req.length if req.cmd <= 1 else 0
        self._send(out, large=req.cmd == _READ and req.length >= THREAD_SEND_MIN)
        self._done(req)

    def _done(self, req: Request) -> None:
        self.inflight_bytes -= self.inflight.pop(id(req), 0)
        if self.inflight_bytes <= self.server.max_queued // 2:
            self._resume("queued-bytes")
        if not self.inflight:
            self.idle.set()

    # ---- flow control and closing ---------------------------------------------------------
    def _pause(self, why: str) -> None:
        if not self._paused_for:
            self.wire.pause_reading()
        self._paused_for.add(why)

    def _resume(self, why: str) -> None:
        if why not in self._paused_for:
            return
        self._paused_for.discard(why)
        if not self._paused_for and not self.closed:
            self.wire.resume_reading()
            if self._cork is None:
                self._process()  # requests already buffered while paused

    def _check_write_buffer(self) -> None:
        if self.wire.queued_bytes > WRITE_LOW and not self.closed:
            self.loop.call_later(0.005, self._check_write_buffer)
        else:
            self._resume("write-buffer")

    def _close_when_idle(self) -> None:
        async def closer() -> None:
            await self.idle.wait()
            self.wire.flush_and_close()
        if self.inflight:
            self.loop.create_task(closer())
        else:
            self.wire.flush_and_close()

    async def drain(self, grace: float, linger: float = 1.0) -> None:
        """Soft disconnect (proto.md "Terminating the transmission phase"): finish the
        requests in flight, answer new ones ESHUTDOWN for ``linger`` seconds so the
        client learns why, then close once the replies have left."""
        self.draining = True
        try:
            await asyncio.wait_for(self.idle.wait(), grace)
        except TimeoutError:
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):  # the client may leave by itself
            await asyncio.wait_for(self.gone.wait(), linger)
        self.wire.flush_and_close()
        try:  # replies already queued go out before the layers are closed
            await asyncio.wait_for(self.gone.wait(), grace)
        except TimeoutError:
            self.wire.close(None)


class NbdServer:
    """Listens on one or more addresses and serves an ``ExportTable``."""

    def __init__(self, exports: ExportTable, *, max_queued: int = 128 << 20) -> None:
        self.exports = exports
        self.max_queued = max_queued
        self.connections: set[NbdConnection] = set()
        self.payloads = PayloadPool()
        self._listeners: list[tuple[socket.socket, asyncio.Task[None]]] = []

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        lsock = open_listener(host, port)
        addr = lsock.getsockname()
        task = asyncio.get_running_loop().create_task(
            accept_forever(lsock, self._accepted, log, "nbd"))
        self._listeners.append((lsock, task))
        log.info("nbd: listening on %s:%s", addr[0], addr[1])
        return addr[0], addr[1]

    def _accepted(self, sock: socket.socket, addr: Any) -> None:
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr or "local")
        NbdConnection(self, sock, peer)

    async def stop(self, grace: float = 10.0) -> None:
        for lsock, task in self._listeners:
            task.cancel()
            lsock.close()
        self._listeners.clear()
        await asyncio.gather(*(conn.drain(grace) for conn in list(self.connections)))
        for export in self.exports:
            try:
                await export.layer.flush()
            except BlockError as exc:
                log.error("nbd: flushing export %s failed: %s", export.name, exc)
