"""The token bucket: its contract, with time passed in, and the window invariant."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockyard.block.throttle_bucket import MIN_BURST, TokenBucket

MiB = 1 << 20


def test_starts_full_and_refills_at_the_rate() -> None:
    b = TokenBucket(10 * MiB, now=100.0)
    assert b.capacity == MiB  # 100 ms of 10 MiB/s
    assert b.level(100.0) == MiB
    b.take(MiB, 100.0)
    assert b.level(100.0) == 0
    assert b.level(100.05) == pytest.approx(MiB / 2)
    assert b.level(200.0) == MiB  # never above capacity


def test_wait_time_says_when_tokens_are_there() -> None:
    b = TokenBucket(MiB, now=0.0)
    b.take(b.capacity, 0.0)
    wait = b.wait_time(4096, 0.0)
    assert wait == pytest.approx(4096 / MiB, rel=1e-3)
    assert b.level(wait) >= 4096
    assert b.wait_time(4096, wait) == 0.0
    assert b.wait_time(10 * b.capacity, 0.0) <= (b.capacity + 1) / MiB  # clipped to capacity


def test_taking_more_than_there_is_a_bug() -> None:
    b = TokenBucket(MiB, now=0.0)
    with pytest.raises(ValueError):
        b.take(b.capacity + 4096, 0.0)


def test_small_rates_keep_a_minimum_burst() -> None:
    b = TokenBucket(125, now=0.0)  # 1 kbit/s
    assert b.capacity == MIN_BURST


def test_unlimited_never_waits() -> None:
    b = TokenBucket(0, now=0.0)
    assert b.unlimited and b.level(0.0) == float("inf")
    b.take(1 << 40, 0.0)
    assert b.wait_time(1 << 40, 0.0) == 0.0


def test_clock_going_backwards_credits_nothing() -> None:
    b = TokenBucket(MiB, now=10.0)
    b.take(b.capacity, 10.0)
    assert b.level(5.0) == 0
    assert b.level(10.0) == 0


def test_set_rate_credits_old_rate_then_clips() -> None:
    b = TokenBucket(10 * MiB, now=0.0)
    b.take(MiB, 0.0)
    b.set_rate(MiB, 0.05)  # 50 ms at 10 MiB/s refilled half of the old capacity...
    assert b.capacity == int(MiB * 0.1)
    assert b.level(0.05) == b.capacity  # ...then clipped to the new, smaller capacity
    b.set_rate(0, 0.05)
    assert b.unlimited
    b.set_rate(MiB, 1.0)
    assert b.level(1.0) == b.capacity  # leaving "unlimited" starts full


def test_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(-1, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1, 0.0).set_rate(-1, 0.0)


def _check_windows(log: list[tuple[float, int]], rate: int, capacity: int) -> None:
    """For every window [t_i, t_j] of the log: taken <= rate * (t_j - t_i) + capacity."""
    for i in range(len(log)):
        taken = 0
        for j in range(i, len(log)):
            taken += log[j][1]
            allowed = rate * (log[j][0] - log[i][0]) + capacity
            assert taken <= allowed + 1e-3, (i, j, taken, allowed)


@settings(max_examples=200, deadline=None)
@given(rate=st.integers(1, 1 << 30),
       steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 4 << 20)), max_size=60))
def test_taken_over_any_window_stays_under_rate_times_window_plus_burst(
        rate: int, steps: list[tuple[float, int]]) -> None:
    now = 0.0
    b = TokenBucket(rate, now)
    log: list[tuple[float, int]] = []
    for dt, want in steps:
        now += dt
        n = min(want, int(b.level(now)))  # a greedy client takes what it may
        if n > 0:
            b.take(n, now)
            log.append((now, n))
        wait = b.wait_time(want, now)  # and sometimes waits exactly as told
        if wait and dt < 0.1:
            now += wait
            n = min(want, b.capacity)
            assert b.level(now) >= n
            b.take(n, now)
            log.append((now, n))
    _check_windows(log, rate, b.capacity)
