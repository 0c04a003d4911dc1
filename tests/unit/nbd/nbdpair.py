"""A fake in-memory wire between the client core and the server core.

``Pair`` owns a ``ClientConnection``, a ``ServerConnection`` and ``DiskApp``,
a tiny synchronous application for the server core that plays the role of
the transport: it answers export queries from a table and runs requests
against bytearrays, building replies with ``nbd.replies``.  ``pump()``
moves bytes both ways until nothing moves, optionally cutting every transfer
into pieces (``piece=``) or feeding the server through ``get_buffer`` /
``buffer_updated`` (``zero_copy=True``), and returns the client's events.

Replies can be held back (``app.hold = True``) and released in any order to
exercise out-of-order completion.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from blockyard.nbd import constants as c
from blockyard.nbd import replies, wire
from blockyard.nbd.client import ClientConnection
from blockyard.nbd.client_events import Closed
from blockyard.nbd.events import NEED_DATA, Disconnect, ExportQuery, ExportSpec, ListQuery, Request
from blockyard.nbd.server import ServerConnection

TF = c.TransmissionFlag
Cmd = c.Cmd
PAGE = 4096
ALL_FLAGS = int(TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_TRIM | TF.SEND_WRITE_ZEROES
                | TF.SEND_CACHE | TF.SEND_FAST_ZERO | TF.CAN_MULTI_CONN)


@dataclass
class Disk:
    spec: ExportSpec
    data: bytearray = field(default_factory=bytearray)
    flushes: int = 0

    def __post_init__(self) -> None:
        if not self.data:
            self.data = bytearray(self.spec.size)


def make_disk(name: str = "disk", size: int = 1 << 20, flags: int = ALL_FLAGS, **kw: int) -> Disk:
    return Disk(ExportSpec(name, size, flags, f"the {name} export", **kw))  # type: ignore[arg-type]


class DiskApp:
    """The server core's application: exports by name, requests on bytearrays."""

    def __init__(self, disks: list[Disk]) -> None:
        self.disks = {d.spec.name: d for d in disks}
        self.export: Disk | None = None
        self.server_events: list[object] = []
        self.out: list[bytes | bytearray | memoryview] = []
        self.hold = False
        self.held: dict[int, list[bytes | bytearray | memoryview]] = {}
        self.sparse = False  # READ replies as data/hole chunks (structured only)

    def lookup(self, name: str) -> Disk | None:
        if name == "" and self.disks:
            return next(iter(self.disks.values()))
        return self.disks.get(name)

    def handle(self, core: ServerConnection, event: object) -> None:
        self.server_events.append(event)
        if isinstance(event, ExportQuery):
            disk = self.lookup(event.name)
            if disk is None:
                core.reject_export(c.Rep.ERR_UNKNOWN, f"no export {event.name!r}")
                return
            core.accept_export(disk.spec)
            if event.go:
                self.export = disk
        elif isinstance(event, ListQuery):
            core.send_list([(d.spec.name, d.spec.description) for d in self.disks.values()])
        elif isinstance(event, Request):
            out = self.run(core, event)
            if self.hold:
                self.held[event.cookie] = out
            else:
                self.out.extend(out)
        else:
            assert isinstance(event, Disconnect), event

    def release(self, cookies: list[int]) -> None:
        for cookie in cookies:
            self.out.extend(self.held.pop(cookie))

    def run(self, core: ServerConnection, req: Request) -> list[bytes | bytearray | memoryview]:
        disk = self.export
        assert disk is not None
        structured = core.negotiated.structured
        end = req.offset + req.length
        if req.cmd == Cmd.READ:
            data = bytes(disk.data[req.offset:end])
            if not structured:
                return replies.read_simple(req.cookie, data)
            if self.sparse and not req.flags & c.CmdFlag.DF:
                return replies.read_sparse(req.cookie, _pieces(req.offset, data))
            return replies.read_structured(req.cookie, req.offset, data)
        if req.cmd == Cmd.WRITE:
            assert req.payload is not None and len(req.payload) == req.length
            disk.data[req.offset:end] = req.payload
        elif req.cmd in (Cmd.TRIM, Cmd.WRITE_ZEROES):
            disk.data[req.offset:end] = bytes(req.length)
        elif req.cmd == Cmd.FLUSH:
            disk.flushes += 1
        elif req.cmd == Cmd.BLOCK_STATUS:
            ext = _extents(disk.data, req.offset, req.length)
            if req.flags & c.CmdFlag.REQ_ONE:
                ext = ext[:1]
            return [replies.block_status(req.cookie, cid, ext)
                    for cid in core.negotiated.meta_contexts]
        return [replies.ok(req.cookie)]


def _extents(data: bytearray, offset: int, length: int) -> list[tuple[int, int]]:
    """base:allocation by content: an all-zero page is reported as a hole."""
    out: list[tuple[int, int]] = []
    pos, end = offset, offset + length
    while pos < end:
        nxt = min((pos // PAGE + 1) * PAGE, end)
        flags = c.STATE_HOLE | c.STATE_ZERO if not any(data[pos:nxt]) else 0
        if out and out[-1][1] == flags:
            out[-1] = (out[-1][0] + nxt - pos, flags)
        else:
            out.append((nxt - pos, flags))
        pos = nxt
    return out


def _pieces(offset: int, data: bytes) -> list[tuple[int, bytes | int]]:
    """Cut a read into page-aligned data and hole pieces (all-zero pages are holes)."""
    out: list[tuple[int, bytes | int]] = []
    pos = 0
    for n, flags in _extents(bytearray(data), 0, len(data)):
        item: bytes | int = n if flags else data[pos:pos + n]
        out.append((offset + pos, item))
        pos += n
    return out or [(offset, b"")]


class Pair:
    """Client core <-> server core over an in-memory wire."""

    def __init__(self, disks: list[Disk] | None = None, *, no_zeroes: bool = True,
                 server_flags: int = c.HandshakeFlag.FIXED_NEWSTYLE | c.HandshakeFlag.NO_ZEROES,
                 piece: int = 0, zero_copy: bool = False) -> None:
        self.client = ClientConnection(no_zeroes=no_zeroes)
        self.server = ServerConnection(handshake_flags=server_flags)
        self.app = DiskApp(disks if disks is not None else [make_disk()])
        self.piece = piece
        self.zero_copy = zero_copy

    @property
    def disk(self) -> Disk:
        assert self.app.export is not None
        return self.app.export

    def pump(self, limit: int = 10_000) -> list[object]:
        events: list[object] = []
        for _ in range(limit):
            moved = self._to_client(events) + self._to_server()
            if not moved:
                return events
        raise AssertionError("the wire never went quiet")

    def _to_client(self, events: list[object]) -> int:
        out = self.app.out + self.server.data_to_send()
        self.app.out = []
        data = b"".join(bytes(b) for b in out)
        for part in self._cut(data):
            self.client.receive_data(part)
        events.extend(drain(self.client))
        return len(data)

    def _to_server(self) -> int:
        data = b"".join(bytes(b) for b in self.client.data_to_send())
        for part in self._cut(data):
            if self.zero_copy:
                feed_zero_copy(self.server, part, self.serve)
            else:
                self.server.receive_data(part)
                self.serve()
        return len(data)

    def serve(self) -> None:
        while self.server.state.value != "closed":
            event = self.server.next_event()
            if event is NEED_DATA:
                return
            self.app.handle(self.server, event)

    def _cut(self, data: bytes) -> Iterator[bytes]:
        step = self.piece or len(data) or 1
        for i in range(0, len(data), step):
            yield data[i:i + step]

    # ---- conveniences ----------------------------------------------------------------------
    def handshake(self, name: str = "disk", *, structured: bool = False,
                  meta: tuple[str, ...] = ()) -> list[object]:
        events = self.pump()  # greeting
        if structured:
            self.client.structured_reply()
            events += self.pump()
        if meta:
            self.client.set_meta_context(name, meta)
            events += self.pump()
        self.client.go(name)
        return events + self.pump()

    def call(self, cookie: int) -> list[object]:
        """Pump until the request ``cookie`` is done; return the events for it."""
        return [e for e in self.pump() if getattr(e, "cookie", None) == cookie]


def drain(conn: ClientConnection) -> list[object]:
    """Every event the client has now; stops after ``Closed`` (the last one)."""
    events: list[object] = []
    while not events or not isinstance(events[-1], Closed):
        event = conn.next_event()
        if event is NEED_DATA:
            break
        events.append(event)
    return events


def feed_zero_copy(core: ServerConnection | ClientConnection, data: bytes,
                   after: Callable[[], None] | None = None) -> None:
    """Feed ``data`` the way an asyncio BufferedProtocol does: ``get_buffer``,
    fill at most that much, ``buffer_updated``, then ``after()`` (the
    transport drains events from inside ``buffer_updated``)."""
    mv = memoryview(data)
    while mv:
        buf = core.get_buffer(len(mv))
        assert len(buf) > 0, "get_buffer returned an empty buffer"
        n = min(len(buf), len(mv))
        buf[:n] = mv[:n]
        buf.release()
        core.buffer_updated(n)
        mv = mv[n:]
        if after is not None:
            after()


def server_in_transmission(structured: bool, size: int = 1 << 20) -> ServerConnection:
    """A bare server core in transmission on export 'disk' (no application)."""
    server = ServerConnection()
    server.data_to_send()
    server.receive_data(wire.CLIENT_FLAGS.pack(3))
    if structured:
        server.receive_data(wire.option(c.Opt.STRUCTURED_REPLY))
    server.receive_data(wire.option(c.Opt.GO, wire.info_request("disk")))
    event = server.next_event()
    assert isinstance(event, ExportQuery)
    server.accept_export(ExportSpec("disk", size, ALL_FLAGS))
    server.data_to_send()
    return server


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Turn a hang into a TimeoutError (SIGALRM; the main thread only)."""
    def on_alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
