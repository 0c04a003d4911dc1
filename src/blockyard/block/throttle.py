"""Bandwidth groups on the event loop: ``ThrottleGroup`` and ``ThrottleLayer``.

``ThrottleGroup`` is the asyncio shell around the pure ``FairScheduler``
(see ``throttle_sched`` for the theory of operation).  A request that must
wait gets a future; the group keeps at most one timer armed, for the moment
the bucket will hold the next piece to pay, and re-polls on every new
request, on every timer and on ``set``.  No thread is held while waiting.
The clock and the timer are injected (``clock()`` -> seconds, and
``call_later(delay, callback)`` -> a handle with ``cancel()``), so unit tests
drive a group with a fake clock; the defaults are ``time.monotonic`` and the
running loop's ``call_later``.  A group lives on one event loop.

``ThrottleLayer(inner, group, session_key)`` is the block layer at the top of
a session's stack: one per (medium, session), all of a group's layers share
the group object, whichever protocol the session speaks.  A transport that
keeps one layer per medium for all its sessions builds it with
``session_key=None`` instead and names the session of each request in the
context variable ``SESSION`` (``token = SESSION.set(key)`` around starting the
request's task, ``SESSION.reset(token)`` after: a Task copies the context
when it is created); requests with no session set share the key "-".  Reads and writes
are charged their data length before they reach ``inner``; flush, trim,
zero, extents and cache move no data and pass free.  The layer never offers
``sync_pread`` or ``sendfile_fd`` (the base class defaults, None), so the
NBD transport cannot route a large read around the throttle.

Closing a ThrottleLayer detaches the session from the group; it closes
``inner`` only when built with ``owns_inner=True``, because a medium is
normally shared by every session that uses it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Hashable
from typing import Protocol

from blockyard.block.layer import Buffer, Layer
from blockyard.block.throttle_sched import QUANTUM, FairScheduler, Ticket
from blockyard.util.limits import check_rate, describe_limit

log = logging.getLogger("blockyard.bandwidth")
SESSION: contextvars.ContextVar[Hashable | None] = contextvars.ContextVar(
    "blockyard_bandwidth_session", default=None)


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], TimerHandle]


def _loop_call_later(delay: float, callback: Callable[[], None]) -> TimerHandle:
    return asyncio.get_running_loop().call_later(delay, callback)


class ThrottleGroup:
    """One named bandwidth limit shared by every session attached to it."""

    def __init__(self, name: str, rate: int, *, clock: Callable[[], float] = time.monotonic,
                 call_later: CallLater = _loop_call_later, quantum: int = QUANTUM,
                 burst_seconds: float | None = None) -> None:
        self.name = name
        self._clock = clock
        self._call_later = call_later
        options = {} if burst_seconds is None else {"burst_seconds": burst_seconds}
        self._sched = FairScheduler(check_rate(rate), clock(), quantum=quantum, **options)
        self._timer: TimerHandle | None = None
        self._timer_at = 0.0
        self.sessions: dict[Hashable, int] = {}  # session key -> layers attached

    # ---- configuration ------------------------------------------------------------
    @property
    def rate(self) -> int:
        return self._sched.rate

    def set(self, rate: int) -> None:
        """Change the limit (bytes/s, 0 = unlimited); applies to the next piece paid."""
        rate = check_rate(rate)
        old = self._sched.rate
        self._sched.set_rate(rate, self._clock())
        log.info("bandwidth group %s: %s -> %s", self.name, describe_limit(old),
                 describe_limit(rate))
        self._cancel_timer()
        self._run()

    # ---- sessions ------------------------------------------------------------------
    def attach(self, session: Hashable) -> None:
        self.sessions[session] = self.sessions.get(session, 0) + 1
        self._sched.pin(session)

    def detach(self, session: Hashable) -> None:
        left = self.sessions.get(session, 0) - 1
        if left > 0:
            self.sessions[session] = left
        else:
            self.sessions.pop(session, None)
            self._sched.forget(session)

    def admitted(self, session: Hashable) -> int:
        """Bytes admitted so far for a session (statistics)."""
        return self._sched.admitted.get(session, 0)

    @property
    def waiting(self) -> int:
        return self._sched.waiting

    # ---- admission -------------------------------------------------------------------
    async def admit(self, session: Hashable, nbytes: int) -> None:
        """Return once ``nbytes`` may move for ``session``; at once if tokens allow."""
        ticket = self._sched.request(session, nbytes, self._clock())
        if ticket is None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ticket.waiter = fut
        self._run()
        try:
            await fut
        except asyncio.CancelledError:
            self._sched.cancel(ticket)
            self._run()
            raise

    def _run(self) -> None:
        ready, wake = self._sched.poll(self._clock())
        for ticket in ready:
            self._wake(ticket)
        if wake is None:
            self._cancel_timer()
        elif self._timer is None or wake < self._timer_at:
            self._cancel_timer()
            self._timer_at = wake
            self._timer = self._call_later(max(0.0, wake - self._clock()), self._on_timer)

    @staticmethod
    def _wake(ticket: Ticket) -> None:
        fut = ticket.waiter
        if isinstance(fut, asyncio.Future) and not fut.done():
            fut.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        self._run()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __repr__(self) -> str:
        return f"ThrottleGroup({self.name!r}, {describe_limit(self.rate)})"


class ThrottleLayer(Layer):
    """Charges a session's reads and writes to its bandwidth group."""

    def __init__(self, inner: Layer, group: ThrottleGroup, session_key: Hashable | None, *,
                 owns_inner: bool = False) -> None:
        super().__init__(inner)
        self.group = group
        self.session_key = session_key
        self.owns_inner = owns_inner
        self._attached = session_key is not None
        if session_key is not None:
            group.attach(session_key)

    def _session(self) -> Hashable:
        key = self.session_key
        if key is None:
            key = SESSION.get()
        return "-" if key is None else key

    @property
    def write_cache_enabled(self) -> bool:
        return bool(getattr(self.inner, "write_cache_enabled", True))

    async def _pread(self, offset: int, length: int) -> Buffer:
        await self.group.admit(self._session(), length)
        return await self._next().pread(offset, length)

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        await self.group.admit(self._session(), len(data))
        await self._next().pwrite(offset, data, fua)

    def detach(self) -> None:
        if self._attached:
            self._attached = False
            self.group.detach(self.session_key)

    async def _close(self) -> None:
        self.detach()
        if self.owns_inner and self.inner is not None:
            await self.inner.close()

    def describe(self) -> str:
        inner = self.inner.describe() if self.inner is not None else "-"
        key = "context" if self.session_key is None else self.session_key
        return f"throttle[{self.group.name}:{key}] -> {inner}"
