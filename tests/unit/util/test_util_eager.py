import asyncio
import contextvars

import pytest

from blockyard.util.eager import Driven, drive_eager, run_eager


async def test_synchronous_coroutine_needs_no_task() -> None:
    seen = []

    async def quick() -> None:
        seen.append(1)

    assert run_eager(quick()) is None
    assert seen == [1]


async def test_suspending_coroutine_continues_in_a_task() -> None:
    order = []

    async def slow() -> str:
        order.append("start")
        await asyncio.sleep(0.01)
        order.append("end")
        return "done"

    task = run_eager(slow())
    assert order == ["start"]
    assert task is not None
    assert await task == "done"
    assert order == ["start", "end"]


async def test_cancellation_reaches_the_coroutine() -> None:
    cleaned = []

    async def waiter() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append(True)

    task = run_eager(waiter())
    assert task is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


async def test_exception_after_suspension_propagates() -> None:
    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("x")

    task = run_eager(boom())
    assert task is not None
    with pytest.raises(ValueError):
        await task


# ---- drive_eager: no Task while the coroutine awaits futures ------------------------------

async def test_driven_synchronous_coroutine_returns_none() -> None:
    async def quick() -> int:
        return 1

    assert drive_eager(quick()) is None


async def test_driven_resumes_from_the_future_without_a_task() -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    seen: list[object] = []

    async def waits() -> None:
        seen.append(await fut)
        seen.append(asyncio.current_task())

    driven = drive_eager(waits())
    assert isinstance(driven, Driven) and not driven.done()
    before = len(asyncio.all_tasks())
    fut.set_result(7)
    await asyncio.sleep(0)
    assert seen == [7, None]
    assert driven.done() and len(asyncio.all_tasks()) <= before


async def test_driven_exception_reaches_the_coroutines_handler() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    caught: list[BaseException] = []

    async def waits() -> None:
        try:
            await fut
        except ValueError as exc:
            caught.append(exc)

    driven = drive_eager(waits())
    assert driven is not None
    fut.set_exception(ValueError("x"))
    await driven
    assert isinstance(caught[0], ValueError)


async def test_driven_cancel_raises_where_it_awaits() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    outcome: list[str] = []

    async def waits() -> None:
        try:
            await fut
        except asyncio.CancelledError:
            outcome.append("cancelled")
        await asyncio.sleep(0.001)  # goes on after handling it, as in a Task
        outcome.append("after")

    driven = drive_eager(waits())
    assert driven is not None
    assert driven.cancel()
    await asyncio.wait_for(asyncio.ensure_future(driven), 1)
    assert outcome == ["cancelled", "after"] and fut.cancelled()


async def test_driven_cancel_after_the_future_completed_is_not_lost() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    outcome: list[str] = []

    async def waits() -> None:
        try:
            await fut
            outcome.append("resumed")
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            outcome.append("cancelled")

    driven = drive_eager(waits())
    assert driven is not None
    fut.set_result(1)  # its wake-up is scheduled, not run
    driven.cancel()
    await driven
    assert outcome == ["cancelled"]


async def test_driven_keeps_the_context_of_its_start() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("v", default="unset")
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def waits() -> None:
        seen.append(var.get())
        await fut
        seen.append(var.get())

    token = var.set("session")
    try:
        driven = drive_eager(waits())
    finally:
        var.reset(token)
    assert driven is not None
    fut.set_result(0)
    await driven
    assert seen == ["session", "session"]


async def test_driven_bare_yield_falls_back_to_a_task() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("w", default="unset")
    seen: list[object] = []

    async def yields() -> None:
        await asyncio.sleep(0)  # a bare yield: only a Task knows what to do with it
        seen.append(var.get())
        seen.append(asyncio.current_task() is not None)
        await asyncio.sleep(0.001)

    token = var.set("kept")
    try:
        driven = drive_eager(yields())
    finally:
        var.reset(token)
    assert driven is not None
    done: list[Driven] = []
    driven.add_done_callback(done.append)
    await driven
    assert seen == ["kept", True] and done == [driven]


async def test_driven_fallback_task_can_be_cancelled() -> None:
    outcome: list[str] = []

    async def yields() -> None:
        await asyncio.sleep(0)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    driven = drive_eager(yields())
    assert driven is not None
    await asyncio.sleep(0.01)
    driven.cancel()
    await driven
    assert outcome == ["cancelled"] and driven.done()


async def test_driven_escaping_exception_goes_to_the_loop_handler() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
    fut: asyncio.Future[int] = loop.create_future()

    async def boom() -> None:
        await fut
        raise ValueError("bug")

    try:
        driven = drive_eager(boom())
        assert driven is not None
        fut.set_result(0)
        await driven
    finally:
        loop.set_exception_handler(old)
    assert isinstance(reported[0]["exception"], ValueError)


async def test_driven_exception_before_suspending_goes_to_the_caller() -> None:
    async def early() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        drive_eager(early())


async def test_driven_gather_waits_for_many() -> None:
    loop = asyncio.get_running_loop()
    futs = [loop.create_future() for _ in range(3)]
    got: list[int] = []

    async def waits(f: asyncio.Future[int]) -> None:
        got.append(await f)

    driven = [drive_eager(waits(f)) for f in futs]
    for i, f in enumerate(futs):
        loop.call_later(0.001 * (i + 1), f.set_result, i)
    await asyncio.gather(*driven, return_exceptions=True)
    assert sorted(got) == [0, 1, 2]
