"""The command window: CmdSN, ExpCmdSN, MaxCmdSN (RFC 7143 §4.2.2.1, RFC 1982).

Non-immediate commands are numbered by the initiator.  The target accepts a
command only if ``ExpCmdSN <= CmdSN <= MaxCmdSN`` (serial arithmetic) and
has not seen that number yet; anything else is silently dropped (that is
what libiscsi's iSCSIcmdsn tests expect).  Accepted commands are released
in CmdSN order: one arriving early (a gap before it) waits until the gap is
filled.  ExpCmdSN is the first number not yet received; MaxCmdSN stays
``depth - 1`` ahead of it, so it never moves backwards (an initiator
ignores a smaller MaxCmdSN).

An ABORT TASK for a command that has not arrived but whose RefCmdSN lies in
the window fills that number with nothing (§11.5.1: "consider the CmdSN as
received"); if the command arrives later it is dropped as a duplicate.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from blockyard.iscsi.serial import in_window, sn_add

T = TypeVar("T")
_FILLED = object()


class CommandWindow(Generic[T]):
    def __init__(self, first_cmdsn: int, depth: int = 128) -> None:
        if depth < 1:
            raise ValueError("the command window holds at least one command")
        self.exp_cmdsn = first_cmdsn & 0xFFFFFFFF
        self.depth = depth
        self._early: dict[int, object] = {}

    @property
    def max_cmdsn(self) -> int:
        return (self.exp_cmdsn + self.depth - 1) & 0xFFFFFFFF

    def in_window(self, cmdsn: int) -> bool:
        return in_window(cmdsn, self.exp_cmdsn, self.max_cmdsn)

    def accepts(self, cmdsn: int) -> bool:
        """Would ``arrive`` take this number?  (In the window and not seen yet.)"""
        if cmdsn == self.exp_cmdsn:
            return True
        return self.in_window(cmdsn) and cmdsn not in self._early

    def arrive(self, cmdsn: int, item: T) -> list[T] | None:
        """Accept ``item`` numbered ``cmdsn``.

        Returns the items that are now in order (possibly empty, if a gap
        precedes this one), or None if the number is outside the window or
        already taken: the caller drops the command without an answer.
        """
        if cmdsn != self.exp_cmdsn:
            if not self.in_window(cmdsn) or cmdsn in self._early:
                return None
            self._early[cmdsn] = item
            return []
        ready = [item]
        self.exp_cmdsn = (cmdsn + 1) & 0xFFFFFFFF
        if self._early:
            self._release(ready)
        return ready

    def fill(self, cmdsn: int) -> list[T] | None:
        """Mark ``cmdsn`` received without a command (ABORT TASK of a missing task)."""
        out = self.arrive(cmdsn, _FILLED)  # type: ignore[arg-type]
        return None if out is None else [x for x in out if x is not _FILLED]

    def _release(self, ready: list[T]) -> None:
        early = self._early
        while early:
            item = early.pop(self.exp_cmdsn, None)
            if item is None:
                break
            self.exp_cmdsn = sn_add(self.exp_cmdsn, 1)
            if item is not _FILLED:
                ready.append(item)  # type: ignore[arg-type]

    @property
    def waiting(self) -> int:
        return len(self._early)
