"""ThrottleGroup and ThrottleLayer on a real event loop with a fake clock and fake
timers: waiting on futures, fairness across layers, live ``set``, cancellation."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

import pytest

from blockyard.block.layer import Layer
from blockyard.block.ram import RamDisk
from blockyard.block.raw import RawFile
from blockyard.block.throttle import SESSION, ThrottleGroup, ThrottleLayer
from blockyard.errors import ConfigError

MiB = 1 << 20


class FakeHandle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTime:
    """A clock that moves only when told, and the timers that go with it."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, FakeHandle]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle(self.now + delay, callback)
        heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
        return handle

    @property
    def armed(self) -> list[FakeHandle]:
        return [h for _, _, h in self._heap if not h.cancelled]

    async def run_until(self, end: float) -> None:
        while True:
            await settle()
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
            if not self._heap or self._heap[0][0] > end:
                self.now = end
                await settle()
                return
            when, _, handle = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            handle.callback()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def make_group(ft: FakeTime, rate: int) -> ThrottleGroup:
    return ThrottleGroup("g", rate, clock=ft.clock, call_later=ft.call_later)


async def reader(layer: Layer, size: int, counter: dict[str, int], key: str) -> None:
    while True:
        await layer.pread(0, size)
        counter[key] = counter.get(key, 0) + size


async def test_admits_without_waiting_while_under_the_limit() -> None:
    ft = FakeTime()
    group = make_group(ft, 10 * MiB)
    coro = group.admit("a", 4096)
    with pytest.raises(StopIteration):  # completes on the first step: no suspension
        coro.send(None)
    assert ft.armed == []


async def test_waits_on_a_timer_not_a_thread() -> None:
    ft = FakeTime()
    group = make_group(ft, MiB)
    await group.admit("a", group._sched.bucket.capacity)
    task = asyncio.ensure_future(group.admit("a", 64 << 10))
    await settle()
    assert not task.done() and len(ft.armed) == 1
    await ft.run_until(ft.armed[0].when)
    assert task.done()
    assert ft.now == pytest.approx((64 << 10) / MiB, rel=1e-3)


@pytest.mark.parametrize("n", [2, 8])
async def test_sessions_on_layers_share_the_group_equally(n: int) -> None:
    ft = FakeTime()
    group = make_group(ft, 20 * MiB)
    disk = RamDisk(8 * MiB)
    counts: dict[str, int] = {}
    sizes = [MiB, 4096, 256 << 10, 64 << 10, 2 * MiB, 32 << 10, 128 << 10, 16 << 10]
    tasks = []
    for i in range(n):
        layer = ThrottleLayer(disk, group, f"s{i}")
        for _ in range(1 + 3 * (i % 2)):  # queue depth 1 or 4
            tasks.append(asyncio.ensure_future(reader(layer, sizes[i], counts, f"s{i}")))
    await ft.run_until(5.0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    total = sum(counts.values())
    assert total == pytest.approx(20 * MiB * 5, abs=n * 2 * MiB + group._sched.bucket.capacity)
    for key, got in counts.items():
        assert got == pytest.approx(total / n, abs=2 * MiB + (128 << 10)), (key, counts)
    assert group.waiting == 0  # cancelled readers left their queues


async def test_set_mid_run_takes_effect_at_once() -> None:
    ft = FakeTime()
    group = make_group(ft, 20 * MiB)
    layers = [ThrottleLayer(RamDisk(4 * MiB), group, k) for k in "ab"]
    counts: dict[str, int] = {}
    tasks = [asyncio.ensure_future(reader(lay, MiB, counts, k))
             for lay, k in zip(layers, "ab", strict=True) for _ in range(4)]
    await ft.run_until(3.0)
    before = sum(counts.values())
    group.set(10 * MiB)
    await ft.run_until(3.1)
    early = sum(counts.values()) - before
    await ft.run_until(6.0)
    after = sum(counts.values()) - before
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert before == pytest.approx(20 * MiB * 3, abs=3 * MiB)
    assert early <= 10 * MiB * 0.1 + 2 * MiB  # no trace of the old rate after 100 ms
    assert after == pytest.approx(10 * MiB * 3, abs=3 * MiB)
    assert abs(counts["a"] - counts["b"]) <= 2 * MiB


async def test_raising_the_limit_rearms_an_earlier_timer() -> None:
    ft = FakeTime()
    group = make_group(ft, 1000)  # 8 kbit/s: a 64 KiB piece takes a minute
    await group.admit("a", group._sched.bucket.capacity)
    task = asyncio.ensure_future(group.admit("a", 64 << 10))
    await settle()
    slow = ft.armed[0].when
    group.set(100 * MiB)
    await ft.run_until(0.01)
    assert task.done() and slow > 60


async def test_unlimited_releases_waiters_without_time_passing() -> None:
    ft = FakeTime()
    group = make_group(ft, MiB)
    await group.admit("a", group._sched.bucket.capacity)
    tasks = [asyncio.ensure_future(group.admit(k, 8 * MiB)) for k in "abc"]
    await settle()
    group.set(0)
    await settle()
    assert all(t.done() for t in tasks) and ft.now == 0.0 and ft.armed == []


async def test_cancelled_waiter_leaves_the_queue() -> None:
    ft = FakeTime()
    group = make_group(ft, MiB)
    await group.admit("a", group._sched.bucket.capacity)
    big = asyncio.ensure_future(group.admit("a", 30 * MiB))
    small = asyncio.ensure_future(group.admit("b", 4096))
    await settle()
    big.cancel()
    await ft.run_until(0.05)
    assert big.cancelled() and small.done() and group.waiting == 0


async def test_set_refuses_bad_rates() -> None:
    group = make_group(FakeTime(), MiB)
    with pytest.raises(ConfigError):
        group.set(-1)
    assert group.rate == MiB


async def test_layer_charges_data_only_and_forwards_the_rest() -> None:
    ft = FakeTime()
    group = make_group(ft, MiB)
    disk = RamDisk(MiB)
    layer = ThrottleLayer(disk, group, "s")
    await layer.pwrite(0, b"x" * 4096, fua=True)
    assert await layer.pread(0, 4096) == b"x" * 4096
    await layer.trim(0, 4096)
    await layer.zero(0, 8192)
    await layer.flush()
    await layer.extents(0, 4096)
    assert group.admitted("s") == 8192
    assert disk.flushes >= 1
    assert layer.can_fua and layer.can_trim and layer.can_flush and layer.write_cache_enabled
    assert "throttle[g:s]" in layer.describe()


async def test_layer_hides_the_transport_bypasses(tmp_path) -> None:
    path = tmp_path / "d.raw"
    path.write_bytes(bytes(1 << 20))
    raw = RawFile(path)
    assert raw.sync_pread is not None and raw.sendfile_fd is not None
    layer = ThrottleLayer(raw, make_group(FakeTime(), MiB), "s", owns_inner=True)
    assert layer.sync_pread is None and layer.sendfile_fd is None
    await layer.close()
    assert raw.fd == -1  # owns_inner: closing the session closed the file


async def test_closing_a_session_detaches_but_keeps_the_shared_medium() -> None:
    group = make_group(FakeTime(), MiB)
    disk = RamDisk(MiB)
    a = ThrottleLayer(disk, group, "a")
    b = ThrottleLayer(disk, group, "b")
    assert set(group.sessions) == {"a", "b"}
    await a.close()
    await a.close()
    assert set(group.sessions) == {"b"}
    await b.pwrite(0, b"still open")
    assert await b.pread(0, 10) == b"still open"


async def test_one_layer_per_medium_with_the_session_in_the_context() -> None:
    ft = FakeTime()
    group = make_group(ft, 20 * MiB)
    layer = ThrottleLayer(RamDisk(8 * MiB), group, None)  # shared by every session
    assert group.sessions == {} and "throttle[g:context]" in layer.describe()
    counts: dict[str, int] = {}
    tasks = []
    for key, size, depth in (("nbd:10.0.0.1:5000", MiB, 8), ("iscsi:iqn.x", 4096, 1)):
        token = SESSION.set(key)  # as a transport does around starting a request's task
        try:
            tasks += [asyncio.ensure_future(reader(layer, size, counts, key))
                      for _ in range(depth)]
        finally:
            SESSION.reset(token)
    await layer.pread(0, 4096)  # no session in the context: charged to "-"
    await ft.run_until(3.0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert group.admitted("-") == 4096
    a, b = counts["nbd:10.0.0.1:5000"], counts["iscsi:iqn.x"]
    assert a == pytest.approx(b, abs=2 * MiB)  # fair although one layer serves both
    await layer.close()  # nothing attached, nothing to detach
