"""Run a coroutine eagerly: synchronously until it first suspends.

Python 3.12 has ``asyncio.eager_task_factory``; on 3.11 every request would
otherwise pay for a Task and a trip through the loop even when the block
stack answers at once (a page-cache hit served inline).

``run_eager`` steps the coroutine by hand; if it completes there is no Task
at all, and if it suspends on a future the rest runs in an ordinary Task
that resumes it.

``drive_eager`` goes further for requests that do wait (a remote LUN, the
I/O pool): no Task at all while the coroutine only awaits futures.

Theory of operation (``Driven``)
--------------------------------
A Task's ``__step`` sends into the coroutine; the coroutine yields the future
it waits on (``Future.__await__`` sets ``_asyncio_future_blocking``); the Task
adds a done-callback to that future and sends again when it fires.
``Driven`` does exactly that and nothing more:

* every step runs in one ``contextvars`` copy taken at the start, as a Task's
  steps run in the context copied when it was created (``SESSION`` of the
  bandwidth groups survives suspensions);
* ``cancel()`` cancels the future waited on, so the coroutine sees
  ``CancelledError`` where it awaits, or, if that future is already done,
  throws ``CancelledError`` in at the next step (``Task.cancel`` semantics);
* an exception escaping the coroutine is reported to the loop's exception
  handler (a Task would log it when collected); KeyboardInterrupt and
  SystemExit propagate, as from ``Task.__step``;
* anything else the coroutine yields (a bare ``yield`` from
  ``asyncio.sleep(0)``, a future of another loop) is handed, with the
  coroutine, to a real Task that resumes it, so nothing is ever lost.

What differs from a Task, for the code inside: ``asyncio.current_task()``
returns None after the first suspension (and ``asyncio.timeout()``, which
needs it, would fail).  No request path uses either; code that needs them
must wrap itself in a Task (``create_task``) or be started with
``run_eager``.  Done-callbacks of a ``Driven`` run at once when it finishes,
not from the next loop turn.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Generator
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
    return _continue_in_task(asyncio.get_running_loop(), coro, first, None)


def _continue_in_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
                      first: Any, ctx: contextvars.Context | None) -> asyncio.Task[Any]:
    task = loop.create_task(_drive(_Resume(coro, first)), context=ctx)
    # A Task cancelled before its first step never runs _drive's body, so the
    # started coroutine would never see the cancellation: close it then.
    task.add_done_callback(lambda _t: coro.close())
    return task


class Driven:
    """A started coroutine resumed from the done-callbacks of the futures it awaits."""

    __slots__ = ("_coro", "_ctx", "_loop", "_waiter", "_must_cancel", "_task",
                 "_callbacks", "_finished", "_done_fut")

    def __init__(self, coro: Coroutine[Any, Any, Any], ctx: contextvars.Context,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._coro: Coroutine[Any, Any, Any] | None = coro
        self._ctx = ctx
        self._loop = loop
        self._waiter: asyncio.Future[Any] | None = None
        self._must_cancel = False
        self._task: asyncio.Task[Any] | None = None  # set if it had to become a Task
        self._callbacks: list[Callable[[Driven], object]] = []
        self._finished = False
        self._done_fut: asyncio.Future[None] | None = None

    # ---- stepping ---------------------------------------------------------------------
    def _step(self, exc: BaseException | None = None) -> None:
        coro = self._coro
        assert coro is not None
        if self._must_cancel:
            self._must_cancel = False
            exc = asyncio.CancelledError()
        try:
            if exc is None:
                value = self._ctx.run(coro.send, None)
            else:
                value = self._ctx.run(coro.throw, exc)
        except StopIteration:
            self._finish()
        except asyncio.CancelledError:
            self._finish()
        except (KeyboardInterrupt, SystemExit):
            self._finish()
            raise
        except BaseException as error:  # noqa: BLE001 - reported like an unretrieved Task's
            self._finish()
            self._loop.call_exception_handler({
                "message": "exception in an eagerly driven coroutine",
                "exception": error, "coroutine": coro})
        else:
            self._suspend(coro, value)

    def _suspend(self, coro: Coroutine[Any, Any, Any], value: Any) -> None:
        if getattr(value, "_asyncio_future_blocking", False) and value.get_loop() is self._loop:
            value._asyncio_future_blocking = False
            self._waiter = value
            value.add_done_callback(self._wakeup)
            return
        # Not a future of this loop: let a Task deal with it, exactly as a Task would.
        task = _continue_in_task(self._loop, coro, value, self._ctx)
        self._task = task
        self._coro = None
        if self._must_cancel:
            task.cancel()
        task.add_done_callback(lambda _t: self._finish())

    def _wakeup(self, _fut: asyncio.Future[Any]) -> None:
        self._waiter = None
        self._step()  # Future.__await__ calls result(): its exception is raised in there

    def _finish(self) -> None:
        self._finished = True
        self._coro = None
        self._waiter = None
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)
        if self._done_fut is not None and not self._done_fut.done():
            self._done_fut.set_result(None)

    # ---- the Task-like handle ---------------------------------------------------------
    def done(self) -> bool:
        return self._finished

    def cancel(self) -> bool:
        if self._finished:
            return False
        if self._task is not None:
            return self._task.cancel()
        waiter = self._waiter
        if waiter is not None and waiter.cancel():
            return True
        self._must_cancel = True
        return True

    def add_done_callback(self, callback: Callable[[Driven], object]) -> None:
        if self._finished:
            callback(self)
        else:
            self._callbacks.append(callback)

    def __await__(self) -> Generator[Any, None, None]:
        """Wait until the coroutine has finished (its outcome is not returned)."""
        if not self._finished:
            if self._done_fut is None:
                self._done_fut = self._loop.create_future()
            yield from self._done_fut


def drive_eager(coro: Coroutine[Any, Any, Any]) -> Driven | None:
    """Start ``coro`` now; None if it finished, else the ``Driven`` running the rest.

    Exceptions raised before the first suspension propagate to the caller.
    The steps run in a copy of the caller's context, taken now.
    """
    loop = asyncio.get_running_loop()
    driven = Driven(coro, contextvars.copy_context(), loop)
    try:
        value = driven._ctx.run(coro.send, None)
    except StopIteration:
        return None
    driven._suspend(coro, value)
    return driven
