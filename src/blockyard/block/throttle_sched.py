"""The fair scheduler of a bandwidth group: least service first, over sessions.

Theory of operation
-------------------
A group has one token bucket (``throttle_bucket``) and one FIFO queue per
session (an NBD connection or an iSCSI session of one medium).  Fairness is
start-time fair queueing at session granularity, a self-clocked relative of
deficit round robin: every session has a *virtual time*, the bytes it has
been paid; the group's virtual clock is the virtual time at which the last
piece started.

1. ``request(session, n, now)``: if nothing waits and the bucket holds ``n``
   tokens, the request is admitted at once (returns None: a group running
   under its limit costs no queueing).  Otherwise a ``Ticket`` joins the back
   of its session's queue.  A session that becomes active catches up to the
   virtual clock (``vtime = max(vtime, clock)``), so time spent idle earns no
   credit to burst with later.
2. ``poll(now)`` pays tickets from the bucket: it picks the active session
   with the least virtual time (ties: the one active longest), and pays its
   oldest ticket one piece of at most ``quantum`` bytes, adding the piece to
   the session's virtual time; then it picks again.  A piece is paid only
   when the bucket holds all of it, so the scheduler never spins on crumbs
   and a large piece is never overtaken forever by small ones.  A ticket
   whose every byte is paid is *ready*: ``poll`` returns it and the caller
   starts its I/O.
3. ``poll`` also says when to poll next: the moment the bucket will hold the
   piece it is waiting for.  The asyncio shell (``throttle.ThrottleGroup``)
   arms one timer for that moment; ``set_rate`` and every new request poll
   at once, so a changed limit applies to the very next piece (well within
   100 ms).

The result is max-min fair in bytes: n sessions that can all use more than
1/n of the rate get 1/n each (give or take one quantum), whatever their
request sizes and queue depths; a session that needs less (a client at queue
depth 1 waiting on its own round trips) is served as soon as it asks, and
the others share what it leaves.  One busy client cannot starve another.

Large requests are paid in installments: a 32 MiB request at 1 MB/s collects
one quantum at a time and starts when fully paid (about 32 s later, longer
if other sessions share the group).  It neither blocks forever nor bursts:
the bucket's invariant (taken <= rate * window + burst) holds for every
piece, and the request's I/O then runs once, whole.

A cancelled ticket (its client went away) leaves its queue; tokens already
paid for it are not refunded.  Rate 0 means unlimited: everything waiting
becomes ready at the next poll and new requests pass straight through.
Pure: no clock, no asyncio; ``now`` comes in as an argument.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from blockyard.block.throttle_bucket import TokenBucket

QUANTUM = 64 << 10


class Ticket:
    """One request waiting for bandwidth; ``ready`` once fully paid."""

    __slots__ = ("session", "nbytes", "paid", "ready", "cancelled", "waiter")

    def __init__(self, session: Hashable, nbytes: int) -> None:
        self.session = session
        self.nbytes = nbytes
        self.paid = 0
        self.ready = False
        self.cancelled = False
        self.waiter: object = None  # the shell's future

    def __repr__(self) -> str:
        return f"Ticket({self.session!r}, {self.paid}/{self.nbytes})"


class FairScheduler:
    def __init__(self, rate: int, now: float, *, quantum: int = QUANTUM,
                 **bucket_options: float) -> None:
        self.bucket = TokenBucket(rate, now, **bucket_options)  # type: ignore[arg-type]
        self.quantum = quantum
        self._queues: dict[Hashable, deque[Ticket]] = {}  # active sessions, oldest first
        self._vtime: dict[Hashable, int] = {}
        self._vclock = 0
        self.admitted: dict[Hashable, int] = {}  # bytes admitted per session
        self.pinned: set[Hashable] = set()  # sessions whose statistics are kept

    # ---- queries -----------------------------------------------------------------
    @property
    def rate(self) -> int:
        return self.bucket.rate

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def _piece_limit(self) -> int:
        return max(1, min(self.quantum, self.bucket.capacity))

    # ---- requests --------------------------------------------------------------------
    def request(self, session: Hashable, nbytes: int, now: float) -> Ticket | None:
        """Admit now (None) or queue a ticket; call ``poll`` after queueing."""
        if session not in self._vtime:
            self._maybe_prune()
        if nbytes <= 0 or self.bucket.unlimited:
            self._account(session, nbytes)
            return None
        if not self._queues and self.bucket.level(now) >= nbytes:
            self.bucket.take(nbytes, now)
            start = max(self._vtime.get(session, 0), self._vclock)
            self._vclock = start
            self._vtime[session] = start + nbytes
            self._account(session, nbytes)
            return None
        ticket = Ticket(session, nbytes)
        queue = self._queues.get(session)
        if queue is None:
            queue = self._queues[session] = deque()
            self._vtime[session] = max(self._vtime.get(session, 0), self._vclock)
        queue.append(ticket)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Forget a ticket that is no longer wanted (paid tokens are not refunded)."""
        if ticket.ready or ticket.cancelled:
            return
        ticket.cancelled = True
        queue = self._queues.get(ticket.session)
        if queue is None:
            return
        queue.remove(ticket)
        if not queue:
            del self._queues[ticket.session]

    def _account(self, session: Hashable, nbytes: int) -> None:
        self.admitted[session] = self.admitted.get(session, 0) + nbytes

    def _maybe_prune(self) -> None:
        """Forget idle, unpinned sessions once there are many (keys that come and go,
        such as peer addresses).  Only those at most one quantum ahead of the
        virtual clock are dropped: activation raises them to the clock anyway, so
        forgetting costs at most one quantum of fairness, and the statistics."""
        if len(self._vtime) + len(self.admitted) <= 8 * len(self.pinned) + 512:
            return
        horizon = self._vclock + self.quantum
        for key in [k for k in self._vtime if k not in self.pinned and k not in self._queues
                    and self._vtime[k] <= horizon]:
            del self._vtime[key]
        for key in [k for k in self.admitted if k not in self.pinned and k not in self._vtime]:
            del self.admitted[key]

    def pin(self, session: Hashable) -> None:
        self.pinned.add(session)

    def forget(self, session: Hashable) -> None:
        """Drop a finished session's statistics and virtual time."""
        self.pinned.discard(session)
        self.admitted.pop(session, None)
        if session not in self._queues:
            self._vtime.pop(session, None)

    # ---- paying ------------------------------------------------------------------------
    def _next_session(self) -> Hashable:
        vtime = self._vtime
        return min(self._queues, key=vtime.__getitem__)  # min() keeps the first of ties

    def poll(self, now: float) -> tuple[list[Ticket], float | None]:
        """Pay waiting tickets fairly; return (tickets now ready, when to poll next)."""
        if self.bucket.unlimited:
            return self._release_all(), None
        ready: list[Ticket] = []
        limit = self._piece_limit()
        while self._queues:
            session = self._next_session()
            queue = self._queues[session]
            ticket = queue[0]
            piece = min(ticket.nbytes - ticket.paid, limit)
            if self.bucket.level(now) < piece:
                return ready, now + self.bucket.wait_time(piece, now)
            self.bucket.take(piece, now)
            ticket.paid += piece
            self._vclock = max(self._vclock, self._vtime[session])
            self._vtime[session] += piece
            if ticket.paid == ticket.nbytes:
                queue.popleft()
                ticket.ready = True
                self._account(session, ticket.nbytes)
                ready.append(ticket)
                if not queue:
                    del self._queues[session]
        return ready, None

    def _release_all(self) -> list[Ticket]:
        ready: list[Ticket] = []
        for session, queue in self._queues.items():
            for ticket in queue:
                ticket.ready = True
                self._account(session, ticket.nbytes)
                ready.append(ticket)
        self._queues.clear()
        return ready

    def set_rate(self, rate: int, now: float) -> None:
        """Change the limit; the caller polls right after."""
        self.bucket.set_rate(rate, now)
