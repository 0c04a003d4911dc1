"""Run a coroutine eagerly: synchronously until it first suspends.

Python 3.12 has ``asyncio.eager_task_factory``; on 3.11 every request would
otherwise pay for a Task and a trip through the loop even when the block
stack answers at once (a page-cache hit served inline).  ``run_eager`` steps
the coroutine by hand; if it completes there is no Task at all, and if it
suspends on a future the rest runs in an ordinary Task that resumes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any


class _Resume:
    """Awaitable that continues an already started coroutine inside a Task."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        self.first = None
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation and the like go to the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _drive(resume: _Resume) -> Any:
    return await resume


def run_eager(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Start ``coro`` now; return None if it finished, else the Task running the rest.

    Exceptions raised before the first suspension propagate to the caller.
    """
    try:
        first = coro.send(None)
    except StopIteration:
        return None
    task = asyncio.get_running_loop().create_task(_drive(_Resume(coro, first)))
    # A Task cancelled before its first step never runs _drive's body, so the
    # started coroutine would never see the cancellation: close it then.
    task.add_done_callback(lambda _t: coro.close())
    return task
