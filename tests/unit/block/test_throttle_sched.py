"""The fair scheduler, driven by hand with a fake ``now``: admission, installments,
fairness between 2 and 8 sessions, a mid-run limit change, cancellation."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockyard.block.throttle_bucket import TokenBucket
from blockyard.block.throttle_sched import QUANTUM, FairScheduler, Ticket

MiB = 1 << 20


class LoggingBucket(TokenBucket):
    """A bucket that records every take as (now, n)."""

    __slots__ = ("takes",)

    def __init__(self, rate: int, now: float) -> None:
        super().__init__(rate, now)
        self.takes: list[tuple[float, int]] = []

    def take(self, n: int, now: float) -> None:
        super().take(n, now)
        self.takes.append((now, n))


def logging_scheduler(rate: int) -> tuple[FairScheduler, list[tuple[float, int]]]:
    sched = FairScheduler(rate, now=0.0)
    sched.bucket = bucket = LoggingBucket(rate, 0.0)
    return sched, bucket.takes


class Sim:
    """Sessions that keep ``depth`` requests of ``size`` bytes waiting at all times."""

    def __init__(self, sched: FairScheduler, load: dict[Hashable, tuple[int, int]]) -> None:
        self.sched = sched
        self.load = load
        self.now = 0.0
        self.waiting: dict[Hashable, int] = dict.fromkeys(load, 0)
        self.completed: list[tuple[float, Hashable, int]] = []
        for session in load:
            self._top_up(session)

    def _top_up(self, session: Hashable) -> None:
        size, depth = self.load[session]
        while self.waiting[session] < depth:
            ticket = self.sched.request(session, size, self.now)
            if ticket is None:
                self.completed.append((self.now, session, size))
            else:
                self.waiting[session] += 1

    def run_until(self, end: float, max_events: int = 1 << 30) -> None:
        while len(self.completed) < max_events:
            ready, wake = self.sched.poll(self.now)
            for t in ready:
                self.completed.append((self.now, t.session, t.nbytes))
                self.waiting[t.session] -= 1
            for session in {t.session for t in ready}:
                self._top_up(session)
            if wake is None or wake > end:
                self.now = end
                return
            assert wake >= self.now
            self.now = wake

    def share(self, t0: float = 0.0, t1: float = float("inf")) -> dict[Hashable, int]:
        out: dict[Hashable, int] = dict.fromkeys(self.load, 0)
        for t, s, n in self.completed:
            if t0 <= t <= t1:
                out[s] += n
        return out


def test_admits_at_once_while_tokens_last() -> None:
    s = FairScheduler(10 * MiB, now=0.0)
    assert s.request("a", 4096, 0.0) is None
    assert s.admitted["a"] == 4096
    assert s.request("a", 0, 0.0) is None  # zero-length requests never wait


def test_queues_when_empty_and_pays_later() -> None:
    s = FairScheduler(MiB, now=0.0)
    assert s.request("a", s.bucket.capacity, 0.0) is None
    t = s.request("a", 4096, 0.0)
    assert isinstance(t, Ticket)
    ready, wake = s.poll(0.0)
    assert ready == [] and wake is not None and wake > 0
    ready, wake = s.poll(wake)
    assert ready == [t] and t.ready and wake is None


def test_a_large_request_is_paid_in_installments_and_never_bursts() -> None:
    s, takes = logging_scheduler(MiB)  # 1 MiB/s, 100 KiB burst
    t = s.request("big", 32 * MiB, 0.0)
    assert t is not None
    now = 0.0
    while not t.ready:
        _, wake = s.poll(now)
        if wake is None:
            break
        now = wake
    assert t.ready
    assert all(n <= QUANTUM for _, n in takes)
    assert 31.0 < now < 32.1  # 32 MiB at 1 MiB/s, the first 100 KiB from the full bucket


@pytest.mark.parametrize("n_sessions", [2, 8])
def test_busy_sessions_share_equally(n_sessions: int) -> None:
    rate = 20 * MiB
    # mixed request sizes and queue depths: fairness is in bytes, not requests
    sizes = [4096, MiB, 64 << 10, 4 * MiB, 512, 128 << 10, 2 * MiB, 8192]
    load = {f"s{i}": (sizes[i], 1 + 7 * (i % 2)) for i in range(n_sessions)}
    sim = Sim(FairScheduler(rate, now=0.0), load)
    sim.run_until(10.0)
    share = sim.share()
    total = sum(share.values())
    cap = sim.sched.bucket.capacity
    assert total <= rate * 10 + cap + n_sessions * 4 * MiB  # requests admitted whole
    assert total >= rate * 10 - n_sessions * 4 * MiB
    biggest = max(size for size, _ in load.values())  # one request may be part paid
    for session, got in share.items():
        assert abs(got - total / n_sessions) <= 2 * QUANTUM + biggest, (session, share)


def test_a_light_session_is_not_starved_by_a_heavy_one() -> None:
    sim = Sim(FairScheduler(MiB, now=0.0), {"heavy": (32 * MiB, 4), "light": (4096, 1)})
    sim.run_until(5.0)
    waits = [t for t, s, _ in sim.completed if s == "light"]
    assert len(waits) > 50  # a 4 KiB request per turn: every ~64 KiB of the heavy one
    gaps = [b - a for a, b in zip(waits, waits[1:], strict=False)]
    assert max(gaps) <= 2 * QUANTUM / MiB + 0.01


def test_an_idle_session_leaves_its_share_to_others() -> None:
    sim = Sim(FairScheduler(10 * MiB, now=0.0), {"busy": (MiB, 4), "idle": (4096, 0)})
    sim.run_until(4.0)
    assert sim.share()["busy"] >= 10 * MiB * 4 - 2 * MiB


def test_set_mid_run_applies_to_the_next_piece() -> None:
    sched = FairScheduler(20 * MiB, now=0.0)
    sim = Sim(sched, {"a": (MiB, 8), "b": (MiB, 8)})
    sim.run_until(5.0)
    sched.set_rate(10 * MiB, 5.0)
    sim.run_until(10.0)
    first = sum(sim.share(0.0, 5.0).values())
    after = sum(sim.share(5.0 + 1e-9, 10.0).values())
    assert first == pytest.approx(20 * MiB * 5, abs=3 * MiB)
    assert after == pytest.approx(10 * MiB * 5, abs=3 * MiB)
    # within 100 ms of the change the old rate no longer shows
    early = sum(sim.share(5.0 + 1e-9, 5.1).values())
    assert early <= 10 * MiB * 0.1 + 2 * MiB
    share = sim.share(5.0 + 1e-9, 10.0)
    assert abs(share["a"] - share["b"]) <= 2 * MiB


def test_raising_to_unlimited_releases_everything() -> None:
    s = FairScheduler(MiB, now=0.0)
    s.request("a", s.bucket.capacity, 0.0)
    tickets = [s.request(k, 8 * MiB, 0.0) for k in "abc"]
    assert all(tickets)
    s.set_rate(0, 0.1)
    ready, wake = s.poll(0.1)
    assert set(ready) == set(tickets) and wake is None and s.waiting == 0
    assert s.request("a", 1 << 30, 0.2) is None


def test_cancel_removes_a_ticket() -> None:
    s = FairScheduler(MiB, now=0.0)
    s.request("a", s.bucket.capacity, 0.0)
    ta = s.request("a", MiB, 0.0)
    tb = s.request("b", 4096, 0.0)
    assert ta is not None and tb is not None
    s.cancel(ta)
    s.cancel(ta)  # twice is harmless
    assert ta.cancelled and s.waiting == 1
    now = 0.0
    _, wake = s.poll(now)
    while not tb.ready:
        assert wake is not None
        now = wake
        _, wake = s.poll(now)
    assert now < 0.01  # b did not wait behind the cancelled megabyte


def test_fifo_within_a_session() -> None:
    s = FairScheduler(MiB, now=0.0)
    s.request("a", s.bucket.capacity, 0.0)
    tickets = [s.request("a", n, 0.0) for n in (100_000, 10, 50_000, 10)]
    order: list[Ticket] = []
    now = 0.0
    while len(order) < 4:
        ready, wake = s.poll(now)
        order += ready
        if wake is not None:
            now = wake
    assert order == tickets


@settings(max_examples=60, deadline=None)
@given(rate=st.integers(1 << 16, 1 << 26),
       load=st.lists(st.tuples(st.integers(512, 8 << 20), st.integers(0, 6)),
                     min_size=1, max_size=6))
def test_scheduler_keeps_the_bucket_invariant(rate: int, load: list[tuple[int, int]]) -> None:
    sched, takes = logging_scheduler(rate)
    sim = Sim(sched, {i: v for i, v in enumerate(load)})
    sim.run_until(2.0, max_events=3000)
    cap = sched.bucket.capacity
    for i in range(0, len(takes), max(1, len(takes) // 40)):  # sampled window starts
        total = 0
        for t, n in takes[i:]:
            total += n
            assert total <= rate * (t - takes[i][0]) + cap + 1e-3


def test_keys_that_come_and_go_do_not_pile_up() -> None:
    s = FairScheduler(MiB, now=0.0)
    s.pin("kept")
    s.request("kept", 10, 0.0)
    for i in range(10_000):  # e.g. one key per short NBD connection
        s.request(f"peer-{i}", 1, float(i))
    assert len(s.admitted) < 1100 and len(s._vtime) < 1100  # bounded, not 10 001
    assert s.admitted["kept"] == 10
    s.forget("kept")
    assert "kept" not in s.admitted and "kept" not in s.pinned
