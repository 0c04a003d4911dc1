"""A shared/exclusive gate that makes read-modify-write commands atomic.

COMPARE AND WRITE (SBC-3 5.2), ORWRITE, WRITE ATOMIC and EXTENDED COPY read
and write in several awaits; no other write may land in between. Plain
writes pass the gate shared (a counter, no await when nobody holds it
exclusively); the read-modify-write commands take it exclusively and wait
for the shared holders to drain. Waiters are served in arrival order.

The futures come from the running event loop, imported where they are
awaited: the SCSI core stays free of I/O at import time.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class _Hold:
    """``async with gate.shared()`` / ``gate.exclusive()``: no generator, no await when free."""

    __slots__ = ("_gate", "_exclusive")

    def __init__(self, gate: IoGate, exclusive: bool) -> None:
        self._gate = gate
        self._exclusive = exclusive

    async def __aenter__(self) -> None:
        await self._gate.acquire(self._exclusive)

    async def __aexit__(self, *exc: object) -> None:
        self._gate.release(self._exclusive)


class IoGate:
    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._waiters: deque[tuple[bool, Any]] = deque()

    @property
    def busy(self) -> bool:
        """A shared holder would have to wait (someone holds or waits for exclusive)."""
        return self._exclusive or bool(self._waiters)

    def enter_shared(self) -> None:
        """Take the gate shared without waiting; only when not ``busy``."""
        self._shared += 1

    def shared(self) -> _Hold:
        return _Hold(self, False)

    def exclusive(self) -> _Hold:
        return _Hold(self, True)

    async def acquire(self, exclusive: bool) -> None:
        if self._exclusive or self._waiters or (exclusive and self._shared):
            await self._wait(exclusive)
        elif exclusive:
            self._exclusive = True
        else:
            self._shared += 1

    def release(self, exclusive: bool) -> None:
        self._release(exclusive)

    async def _wait(self, exclusive: bool) -> None:
        import asyncio  # the loop that awaits the layer; see the module docstring

        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((exclusive, fut))
        try:
            await fut
        except BaseException:
            if not fut.done() or fut.cancelled():
                self._forget(fut)
            else:  # granted while being cancelled: hand it back
                self._release(exclusive)
            raise

    def _forget(self, fut: Any) -> None:
        self._waiters = deque(w for w in self._waiters if w[1] is not fut)
        self._wake()

    def _release(self, exclusive: bool) -> None:
        if exclusive:
            self._exclusive = False
        else:
            self._shared -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and not self._exclusive:
            exclusive, fut = self._waiters[0]
            if exclusive and self._shared:
                return
            self._waiters.popleft()
            if fut.done():
                continue
            if exclusive:
                self._exclusive = True
                fut.set_result(None)
                return
            self._shared += 1
            fut.set_result(None)
