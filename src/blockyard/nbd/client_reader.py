"""Input side of the NBD client core: a buffer cut into "units".

Theory of operation
-------------------
The client's parser is a chain of units.  At any moment it expects exactly
``_need`` bytes and knows which handler ``_on`` eats them; each handler
decodes its unit, may queue events in ``_events`` and names the next unit
with ``_expect(n, handler, direct)``.  ``next_event()`` hands out queued
events first and otherwise feeds complete units to handlers until an event
appears or the buffer runs dry (``NEED_DATA``).

Bytes arrive by copy (``receive_data``) or zero-copy (``get_buffer`` then
``buffer_updated``, the ``asyncio.BufferedProtocol`` shape).  A unit marked
``direct`` (read payloads) of at least ``DIRECT_PAYLOAD`` bytes is received
into a bytearray of its own, so a large read is handed to the application
without another copy; once that payload is full it is parked in ``_ready``
and input goes back to the main buffer, so ``get_buffer`` never returns an
empty buffer.  ``receive_eof()`` (or ``receive_data(b"")``) records the end
of input; the subclass decides in ``_on_eof`` whether that is a clean end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from blockyard.errors import LocalProtocolError, RemoteProtocolError
from blockyard.nbd.events import NEED_DATA
from blockyard.nbd.inbuf import copy_in

RBUF_SIZE = 256 << 10
DIRECT_PAYLOAD = 64 << 10
MIN_FREE = 64 << 10

Handler = Callable[[bytes | bytearray], None]


class UnitReader:
    """Buffer, unit chain and event queue; see the module docstring."""

    def __init__(self) -> None:
        self._buf = bytearray(RBUF_SIZE)
        self._start = 0
        self._end = 0
        self._payload: bytearray | None = None  # direct unit being filled
        self._pfill = 0
        self._ready: bytearray | None = None  # direct unit complete, not yet handled
        self._need = 0
        self._on: Handler = self._unexpected
        self._direct = False
        self._eof = False
        self._dead = False
        self._events: deque[object] = deque()

    # ---- input -------------------------------------------------------------------------
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes should go (never empty)."""
        if self._payload is not None:
            return memoryview(self._payload)[self._pfill:]
        if len(self._buf) - self._end < MIN_FREE:
            n = self._end - self._start
            if self._start:
                self._buf[:n] = self._buf[self._start:self._end]
                self._start, self._end = 0, n
            if len(self._buf) - self._end < MIN_FREE:
                self._buf.extend(bytes(max(MIN_FREE, len(self._buf))))
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._payload is None:
            self._end += nbytes
            return
        self._pfill += nbytes
        if self._pfill == len(self._payload):
            self._ready, self._payload = self._payload, None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copying input path; ``b""`` means end of input."""
        if not data:
            self.receive_eof()
            return
        if self._eof:
            raise LocalProtocolError("data received after end of input")
        copy_in(self, data)

    def receive_eof(self) -> None:
        self._eof = True

    # ---- the unit chain -------------------------------------------------------------------
    def _expect(self, n: int, handler: Handler, direct: bool = False) -> None:
        self._need = n
        self._on = handler
        self._direct = direct

    def _unexpected(self, data: bytes | bytearray) -> None:
        raise self._fail("the server sent data when none was expected")

    def _fail(self, message: str) -> RemoteProtocolError:
        self._dead = True
        return RemoteProtocolError(message)

    def _buffered(self) -> int:
        return self._end - self._start

    def next_event(self) -> object:
        """The next event, or ``NEED_DATA``; raises ``RemoteProtocolError`` on bad input."""
        events = self._events
        if self._dead and not events:
            raise LocalProtocolError("connection is closed")
        while not events:
            if not self._feed_one():
                return NEED_DATA
        return events.popleft()

    def _feed_one(self) -> bool:
        """Run one unit through its handler; False if more input is needed."""
        if self._ready is not None:
            data, self._ready = self._ready, None
            self._on(data)
            return True
        if self._payload is not None:
            return self._at_eof()
        need, start = self._need, self._start
        if self._end - start < need:
            if self._direct and need >= DIRECT_PAYLOAD:
                self._go_direct(need)
                return self._at_eof()
            return self._at_eof()
        self._start = start + need
        self._on(bytes(self._buf[start:start + need]))
        return True

    def _go_direct(self, need: int) -> None:
        avail = self._end - self._start
        payload = bytearray(need)
        payload[:avail] = self._buf[self._start:self._end]
        self._start = self._end = 0
        self._payload, self._pfill = payload, avail

    def _at_eof(self) -> bool:
        if not self._eof:
            return False
        partial = self._payload is not None or self._end > self._start
        self._on_eof(partial)
        return bool(self._events)

    def _on_eof(self, partial: bool) -> None:  # overridden by the client
        raise self._fail("connection closed")
