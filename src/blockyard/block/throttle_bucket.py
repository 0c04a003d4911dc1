"""A token bucket with time passed in: the accounting half of a bandwidth group.

Contract (in the spirit of nbdkit's ``filters/rate/bucket.c``, written anew):

* one token is one byte; tokens accrue at ``rate`` per second of ``now``, up to
  ``capacity`` (the burst); the bucket starts full;
* ``take(n, now)`` removes ``n`` tokens and is only legal when
  ``level(now) >= n``; callers that cannot wait for that many tokens take
  smaller pieces (the scheduler pays a large request in installments);
* therefore, over ANY interval ``[t0, t1]``, the tokens taken are at most
  ``rate * (t1 - t0) + capacity``: this is the invariant the hypothesis test
  checks, and the whole reason a bandwidth group can promise a limit;
* ``rate == 0`` means unlimited: every ``take`` is allowed and nothing waits;
* ``set_rate`` first credits the time elapsed at the old rate, then changes
  the rate and the capacity (``max(rate * burst_seconds, min_burst)``),
  clipping the level to the new capacity, so a lower limit takes effect for
  the very next token;
* ``now`` must never go backwards; if it does (a broken clock), no tokens are
  credited for the negative interval.

Nothing here sleeps or reads a clock: the caller passes ``now`` and asks
``wait_time(n, now)`` how long until ``n`` tokens are there.
"""

from __future__ import annotations

DEFAULT_BURST_SECONDS = 0.1  # the burst is 100 ms worth of the rate...
MIN_BURST = 64 << 10  # ...but never less than 64 KiB, so small requests pass whole


class TokenBucket:
    __slots__ = ("rate", "capacity", "burst_seconds", "min_burst", "_level", "_stamp")

    def __init__(self, rate: int, now: float, *, burst_seconds: float = DEFAULT_BURST_SECONDS,
                 min_burst: int = MIN_BURST) -> None:
        if rate < 0:
            raise ValueError("rate must not be negative")
        self.burst_seconds = burst_seconds
        self.min_burst = min_burst
        self.rate = rate
        self.capacity = self._capacity_for(rate)
        self._level = float(self.capacity)
        self._stamp = now

    def _capacity_for(self, rate: int) -> int:
        return max(int(rate * self.burst_seconds), self.min_burst) if rate else 0

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._level = min(float(self.capacity), self._level + elapsed * self.rate)
            self._stamp = now

    def level(self, now: float) -> float:
        """Tokens available at ``now`` (``inf`` when unlimited)."""
        if self.rate == 0:
            return float("inf")
        self._refill(now)
        return self._level

    def take(self, n: int, now: float) -> None:
        """Remove ``n`` tokens; the caller checked ``level(now) >= n``."""
        if self.rate == 0:
            return
        self._refill(now)
        if n > self._level + 1e-6:
            raise ValueError(f"take({n}) with only {self._level:.0f} tokens")
        self._level = max(0.0, self._level - n)

    def wait_time(self, n: int, now: float) -> float:
        """Seconds from ``now`` until ``n`` tokens are available (0 if already)."""
        if self.rate == 0:
            return 0.0
        missing = min(n, self.capacity) - self.level(now)
        if missing <= 0:
            return 0.0
        # one byte of margin: float rounding must not leave the waker a hair short
        return (missing + 1) / self.rate

    def set_rate(self, rate: int, now: float) -> None:
        if rate < 0:
            raise ValueError("rate must not be negative")
        if self.rate:
            self._refill(now)
        else:  # leaving "unlimited": start full, as a new bucket would
            self._level = float(self._capacity_for(rate))
        self._stamp = now
        self.rate = rate
        self.capacity = self._capacity_for(rate)
        self._level = min(self._level, float(self.capacity))
