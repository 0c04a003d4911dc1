"""Integration fixtures: blockyard's NBD server over loopback, driven by an asyncio
client built on the sans-IO ``ClientConnection``, and by hostile raw sockets.

* ``AioNbdClient`` -- a thin ``asyncio.BufferedProtocol`` shell: bytes in via
  ``get_buffer`` / ``buffer_updated``, handshake events to a queue, replies
  gathered per cookie into ``Reply`` futures (reads reassembled).
* ``nbd_server`` -- factory fixture: ``await nbd_server(Export(...), ...)``
  starts ``NbdServer`` on 127.0.0.1 port 0 in this event loop; stopped at
  teardown.
* ``blockyard_proc`` -- factory fixture: ``python -m blockyard serve FILE
  --nbd 127.0.0.1:0`` as a subprocess; stopped by PID (SIGTERM) at teardown.
* ``assert_served(host, port)`` -- the check every test ends with: a fresh
  client negotiates, writes, reads back and disconnects cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from blockyard.block.ram import RamDisk
from blockyard.errors import RemoteProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd.client import ClientConnection
from blockyard.nbd.client_events import (
    BlockStatusChunk,
    Closed,
    ErrorChunk,
    HoleChunk,
    OptionAck,
    OptionError,
    ReadChunk,
    Ready,
    RequestDone,
)
from blockyard.nbd.events import NEED_DATA
from blockyard.transport.nbd_server import Export, ExportTable, NbdServer

MiB = 1 << 20
HOST = "127.0.0.1"
FINAL = (OptionAck, OptionError, Ready, Closed)


@dataclass
class Reply:
    cookie: int
    cmd: int
    error: int = 0
    message: str = ""
    data: bytearray | None = None
    extents: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    errors: list[ErrorChunk] = field(default_factory=list)


class AioNbdClient(asyncio.BufferedProtocol):
    """asyncio shell around ``ClientConnection`` (tests only: nbd/ may not import asyncio)."""

    def __init__(self, no_zeroes: bool = True) -> None:
        self.core = ClientConnection(no_zeroes=no_zeroes)
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Queue[object] = asyncio.Queue()
        self.replies: dict[int, tuple[asyncio.Future[Reply], Reply, int]] = {}
        self.completion_order: list[int] = []
        self.error: Exception | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.corked = False

    # ---- protocol callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.core.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.core.buffer_updated(nbytes)
        self._process()

    def eof_received(self) -> bool:
        self.core.receive_eof()
        self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        self._fail_all(exc or ConnectionResetError("connection lost"))

    # ---- events ----------------------------------------------------------------------------
    def _process(self) -> None:
        try:
            while self.error is None:
                event = self.core.next_event()
                if event is NEED_DATA:
                    break
                self._dispatch(event)
                if isinstance(event, Closed):
                    break
        except RemoteProtocolError as exc:
            self.error = exc
            self._fail_all(exc)
            if self.transport is not None:
                self.transport.abort()
        self._flush()

    def _dispatch(self, event: object) -> None:
        cookie = getattr(event, "cookie", None)
        if cookie is None:
            self.handshake.put_nowait(event)
            return
        fut, reply, offset = self.replies[cookie]
        if isinstance(event, ReadChunk):
            assert reply.data is not None
            reply.data[event.offset - offset:event.offset - offset + len(event.data)] = event.data
        elif isinstance(event, HoleChunk):
            pass  # the buffer starts zeroed
        elif isinstance(event, BlockStatusChunk):
            reply.extents[event.context_id] = event.extents
        elif isinstance(event, ErrorChunk):
            reply.errors.append(event)
        elif isinstance(event, RequestDone):
            reply.error, reply.message = event.error, event.message
            del self.replies[cookie]
            self.completion_order.append(cookie)
            fut.set_result(reply)

    def _fail_all(self, exc: Exception) -> None:
        for fut, _, _ in self.replies.values():
            if not fut.done():
                fut.set_exception(exc)
        self.replies.clear()

    def cork(self) -> None:
        """Hold requests back until ``uncork()``: one burst in one write."""
        self.corked = True

    def uncork(self) -> None:
        self.corked = False
        self._flush()

    def _flush(self) -> None:
        if self.corked:
            return
        out = self.core.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    # ---- handshake -----------------------------------------------------------------------------
    async def option(self, method: str, *args: Any) -> list[object]:
        """Send one option (a ClientConnection method) and collect its replies."""
        getattr(self.core, method)(*args)
        self._flush()
        events = []
        while not events or not isinstance(events[-1], FINAL):
            events.append(await asyncio.wait_for(self.handshake.get(), 10))
        return events

    async def go(self, name: str = "disk", structured: bool = True,
                 meta: tuple[str, ...] = ()) -> Ready:
        if structured:
            assert isinstance((await self.option("structured_reply"))[-1], OptionAck)
        if meta:
            await self.option("set_meta_context", name, meta)
        ready = (await self.option("go", name))[-1]
        assert isinstance(ready, Ready), ready
        return ready

    # ---- transmission ---------------------------------------------------------------------------
    def submit(self, method: str, *args: Any, **kw: Any) -> asyncio.Future[Reply]:
        """Queue one request without waiting; the future resolves with its ``Reply``."""
        if self.error is not None:
            raise self.error
        cookie = getattr(self.core, method)(*args, **kw)
        cmd, offset, length = _describe(method, args, kw)
        reply = Reply(cookie, cmd, data=bytearray(length) if cmd == c.Cmd.READ else None)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.replies[cookie] = (fut, reply, offset)
        self._flush()
        return fut

    async def call(self, method: str, *args: Any, **kw: Any) -> Reply:
        return await asyncio.wait_for(self.submit(method, *args, **kw), 30)

    async def disconnect(self) -> None:
        self.core.disconnect()
        self._flush()
        assert isinstance(await asyncio.wait_for(self.handshake.get(), 10), Closed)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _describe(method: str, args: tuple[Any, ...], kw: dict[str, Any]) -> tuple[int, int, int]:
    if method == "request":
        cmd = args[0]
        offset = args[1] if len(args) > 1 else kw.get("offset", 0)
        length = args[2] if len(args) > 2 else kw.get("length", 0)
        return cmd, offset, length
    cmds = {"read": c.Cmd.READ, "write": c.Cmd.WRITE, "flush": c.Cmd.FLUSH,
            "trim": c.Cmd.TRIM, "cache": c.Cmd.CACHE, "write_zeroes": c.Cmd.WRITE_ZEROES,
            "block_status": c.Cmd.BLOCK_STATUS}
    if method == "write":
        return cmds[method], args[0], len(args[1])
    return cmds[method], (args[0] if args else 0), (args[1] if len(args) > 1 else 0)


async def connect(host: str, port: int, no_zeroes: bool = True) -> AioNbdClient:
    """Open a connection and wait for the greeting."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: AioNbdClient(no_zeroes), host, port)
    await asyncio.wait_for(client.handshake.get(), 10)  # Greeting
    return client


async def assert_served(host: str, port: int, name: str = "") -> None:
    """Another client is still served correctly: negotiate, write, read back, disconnect."""
    client = await connect(host, port)
    ready = await client.go(name)
    offset = ready.export.size - 4096
    pattern = os.urandom(4096)
    assert (await client.call("write", offset, pattern)).error == 0
    reply = await client.call("read", offset, 4096)
    assert reply.error == 0 and reply.data == pattern
    await client.disconnect()


# ---- servers ------------------------------------------------------------------------------------
@dataclass
class Served:
    server: NbdServer
    host: str
    port: int
    exports: ExportTable


@pytest.fixture
async def nbd_server(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await nbd_server(*exports, max_queued=...)``; default one 8 MiB RAM disk.

    At teardown the servers are stopped, and any ERROR logged meanwhile (a request
    that crashed, "Exception in callback" from asyncio) fails the test.
    """
    caplog.set_level(logging.WARNING)
    started: list[NbdServer] = []

    async def start(*exports: Export, **kw: Any) -> Served:
        table = ExportTable(list(exports) or [Export("disk", RamDisk(8 * MiB))])
        server = NbdServer(table, **kw)
        host, port = await server.listen(HOST, 0)
        started.append(server)
        return Served(server, host, port, table)

    yield start
    for server in started:
        await asyncio.wait_for(server.stop(grace=2), 10)
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    errors = [r for r in records if r.levelno >= logging.ERROR]
    assert not errors, "errors logged while serving:\n" + "\n".join(
        f"{r.name}: {r.getMessage()}" for r in errors)


LISTEN_RE = re.compile(rb"nbd: listening on ([0-9.]+):(\d+)")


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM to this PID only; wait; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server ignored SIGTERM:\n{self.log.read_text()}") from None


@pytest.fixture
def blockyard_proc(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Factory: ``blockyard_proc(file, *extra_args)`` runs the real CLI on port 0."""
    procs: list[Proc] = []

    def start(path: Path, *extra: str) -> Proc:
        log = tmp_path / f"server-{len(procs)}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "blockyard", "serve", str(path), "--nbd", f"{HOST}:0",
             "--log-level", "info", *extra],
            stdout=subprocess.PIPE, stderr=log.open("wb"), env=env)
        assert proc.stdout is not None
        line = b""
        if select.select([proc.stdout], [], [], 20)[0]:
            line = proc.stdout.readline()
        match = LISTEN_RE.search(line)
        if not match:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no listening line ({line!r}):\n{log.read_text()}")
        handle = Proc(proc, match.group(1).decode(), int(match.group(2)), log)
        procs.append(handle)
        return handle

    yield start
    for handle in procs:
        if handle.proc.poll() is None:
            handle.terminate()
        if handle.proc.stdout is not None:
            handle.proc.stdout.close()
        log = handle.log.read_text(errors="replace")
        assert "Traceback" not in log and " ERROR " not in log, log


@pytest.fixture
def nbd_connect() -> Callable[..., Any]:
    return connect


@pytest.fixture(name="assert_served")
def assert_served_fixture() -> Callable[..., Any]:
    return assert_served
