import asyncio

import pytest

from blockyard.util.eager import run_eager


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
