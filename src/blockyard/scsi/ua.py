"""Unit attention conditions, kept per I_T nexus per logical unit (SAM-5 5.14, SPC-4 5.14).

A nexus that sends its first command to a logical unit finds POWER ON,
RESET, OR BUS DEVICE RESET OCCURRED (29h/00h) pending. Later conditions are
queued; a reset condition (29h) replaces everything queued before it
because a reset supersedes older news. Each condition is reported once: by
the next command that is not INQUIRY, REPORT LUNS or REQUEST SENSE (as a
CHECK CONDITION), or by REQUEST SENSE (as sense data).
"""

from __future__ import annotations

from collections.abc import Iterable

from blockyard.scsi.sense import POWER_ON_RESET, UNIT_ATTENTION, ScsiError
from blockyard.scsi.task import Nexus

Asc = tuple[int, int]
MAX_QUEUED = 8  # SPC-4 5.14: a device may drop older conditions when full


class UnitAttentions:
    def __init__(self) -> None:
        self._pending: dict[Nexus, list[Asc]] = {}

    @property
    def nexuses(self) -> list[Nexus]:
        return list(self._pending)

    def knows(self, nexus: Nexus) -> bool:
        return nexus in self._pending

    def first_contact(self, nexus: Nexus) -> None:
        if nexus not in self._pending:
            self._pending[nexus] = [POWER_ON_RESET]

    def establish(self, code: Asc, nexuses: Iterable[Nexus]) -> None:
        for n in nexuses:
            queue = self._pending.get(n)
            if queue is None:
                continue  # its first command reports 29h/00h anyway
            if code[0] == 0x29:
                queue[:] = [code]
            elif code not in queue:
                queue.append(code)
                del queue[:-MAX_QUEUED]

    def establish_all(self, code: Asc, *, except_: Nexus | None = None) -> None:
        self.establish(code, (n for n in self._pending if n != except_))

    def pop(self, nexus: Nexus) -> ScsiError | None:
        queue = self._pending.get(nexus)
        if not queue:
            return None
        asc, ascq = queue.pop(0)
        return ScsiError(UNIT_ATTENTION, asc, ascq)

    def has(self, nexus: Nexus) -> bool:
        return bool(self._pending.get(nexus))

    def clear(self, nexus: Nexus, code: Asc) -> None:
        queue = self._pending.get(nexus)
        if queue and code in queue:
            queue.remove(code)

    def forget(self, nexus: Nexus) -> None:
        """The I_T nexus is gone; a new one starts over with 29h/00h."""
        self._pending.pop(nexus, None)
