"""One initiator TCP connection on the event loop: a thin shell around
``iscsi.initiator.InitiatorConnection``.

A ``BufferedProtocol`` receives straight into the core's buffer, stamps the
loop time (liveness), drains the core's events into the owner's
``on_event`` and writes what the core queued in one ``writelines``.
Submissions made in one loop turn are flushed together (``call_soon``).
The timer is re-armed only when the core wants to run earlier than the
armed time; a timer that fires early simply re-arms.  When the core's
state is CLOSED after an event (login failed, logged out, failed) the
socket is closed; a lost socket becomes ``ConnectionFailed`` in the core.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any, cast

from blockyard.iscsi.initiator import InitiatorConnection
from blockyard.iscsi.initiator_command import Command
from blockyard.iscsi.initiator_events import NEED_DATA, InitiatorState


class InitiatorProtocol(asyncio.BufferedProtocol):
    def __init__(self, core: InitiatorConnection, on_event: Callable[[Any], None]) -> None:
        self.core = core
        self.on_event = on_event
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._flush_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    # ---- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.transport.set_write_buffer_limits(high=8 << 20)
        self._flush()  # the first Login Request

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.core.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.core.buffer_updated(nbytes, self.loop.time())
        self.process()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in (self._flush_handle, self._timer):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._timer = None
        if not self.closed:
            self.closed = True
            reason = f"connection lost: {exc}" if exc else "connection closed by the target"
            self.core.connection_lost(reason)
            self.process()

    # ---- driving the core --------------------------------------------------------------
    def process(self) -> None:
        core, on_event = self.core, self.on_event
        while True:
            event = core.next_event()
            if event is NEED_DATA:
                break
            on_event(event)
        self._flush()
        if core.state is InitiatorState.CLOSED:
            self.close()
        else:
            self._arm_timer()

    def submit(self, cmd: Command) -> None:
        self.core.submit(cmd, self.loop.time())
        self.soon()

    def soon(self) -> None:
        """Flush (and re-arm the timer) once this loop turn."""
        if self._flush_handle is None and not self.closed:
            self._flush_handle = self.loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        self._flush()
        self._arm_timer()

    def _flush(self) -> None:
        out = self.core.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    def _arm_timer(self) -> None:
        if self.closed:
            return
        when = self.core.get_timer()
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if not self.closed:
            self.core.handle_timer(self.loop.time())
            self.process()

    # ---- ending -------------------------------------------------------------------------
    def close(self) -> None:
        """Close after the queued bytes are written (the core is done with this socket)."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
