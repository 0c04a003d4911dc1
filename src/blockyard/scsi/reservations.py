"""Reservations of one logical unit: RESERVE(6) and persistent reservations.

Pure state, no I/O. Two mechanisms coexist (SPC-4 5.9):

* RESERVE(6)/RELEASE(6) (SPC-2 7.21): one I_T nexus holds the unit; every
  other nexus gets RESERVATION CONFLICT except for the ``r6_free`` commands.
  Dropped on I_T nexus loss, LOGICAL UNIT RESET and target resets.
* Persistent reservations (SPC-4 5.9.5 - 5.9.11): registrations are kept per
  I_T nexus (ALL_TG_PT and SPEC_I_PT are not supported, so one nexus = one
  registration), a reservation has a type (table 64) and, for the
  non-all-registrants types, one holder. They survive resets and nexus loss
  but not a restart of the process (APTPL is refused: PTPL_C = 0).

Which commands conflict (SPC-4 table 62, SBC-3 table 13) is decided from the
command's ``Access`` class; see ``commands.py``.
"""

from __future__ import annotations

from enum import IntEnum

from blockyard.scsi.commands import Access, Command
from blockyard.scsi.sense import (
    ILLEGAL_REQUEST,
    INVALID_RELEASE_OF_PR,
    REGISTRATIONS_PREEMPTED,
    RESERVATIONS_PREEMPTED,
    RESERVATIONS_RELEASED,
    ReservationConflict,
    ScsiError,
    invalid_cdb,
    invalid_param,
)
from blockyard.scsi.task import Nexus
from blockyard.scsi.ua import UnitAttentions


class PrType(IntEnum):
    """Persistent reservation types (SPC-4 6.14.3, table 201)."""

    WRITE_EXCLUSIVE = 1
    EXCLUSIVE_ACCESS = 3
    WRITE_EXCLUSIVE_RO = 5
    EXCLUSIVE_ACCESS_RO = 6
    WRITE_EXCLUSIVE_AR = 7
    EXCLUSIVE_ACCESS_AR = 8


ALL_REGISTRANTS = (PrType.WRITE_EXCLUSIVE_AR, PrType.EXCLUSIVE_ACCESS_AR)
REGISTRANTS_ONLY = (PrType.WRITE_EXCLUSIVE_RO, PrType.EXCLUSIVE_ACCESS_RO)
_WRITE_TYPES = (PrType.WRITE_EXCLUSIVE_RO, PrType.WRITE_EXCLUSIVE_AR)
SCOPE_LU = 0


def check_type(rtype: int, scope: int) -> PrType:
    """Scope must be LU_SCOPE and type one of table 201 (SPC-4 6.14.2)."""
    if scope != SCOPE_LU:
        raise invalid_cdb(2, 7)
    try:
        return PrType(rtype)
    except ValueError:
        raise invalid_cdb(2, 3) from None


class Reservations:
    def __init__(self, ua: UnitAttentions) -> None:
        self.ua = ua
        self.r6_holder: Nexus | None = None
        self.keys: dict[Nexus, int] = {}
        self.rtype: PrType | None = None
        self.holder: Nexus | None = None  # the reserving nexus
        self.generation = 0

    # ---- conflicts (SPC-4 5.9.1) ---------------------------------------------
    @property
    def active(self) -> bool:
        return self.r6_holder is not None or self.rtype is not None

    def is_holder(self, nexus: Nexus) -> bool:
        if self.rtype in ALL_REGISTRANTS:
            return nexus in self.keys
        return self.rtype is not None and nexus == self.holder

    def conflicts(self, nexus: Nexus, cmd: Command) -> bool:
        if self.r6_holder is not None and self.r6_holder != nexus and not cmd.r6_free:
            return True
        if self.rtype is None or cmd.access == Access.FREE or self.is_holder(nexus):
            return False
        registered = nexus in self.keys
        if self.rtype in _WRITE_TYPES:
            return cmd.access == Access.WRITE and not registered
        if self.rtype in (PrType.EXCLUSIVE_ACCESS_RO, PrType.EXCLUSIVE_ACCESS_AR):
            return not registered
        if self.rtype == PrType.WRITE_EXCLUSIVE:
            return cmd.access == Access.WRITE
        return True  # EXCLUSIVE ACCESS, not the holder

    # ---- RESERVE(6) / RELEASE(6) (SPC-2 7.21, 7.17) ----------------------------
    def reserve6(self, nexus: Nexus) -> None:
        if self.rtype is not None:
            raise ReservationConflict()
        if self.r6_holder not in (None, nexus):
            raise ReservationConflict()
        self.r6_holder = nexus

    def release6(self, nexus: Nexus) -> None:
        if self.r6_holder == nexus:
            self.r6_holder = None

    def drop_reserve6(self, nexus: Nexus | None = None) -> None:
        """Resets (``nexus`` None) and I_T nexus loss end a RESERVE(6)."""
        if nexus is None or self.r6_holder == nexus:
            self.r6_holder = None

    # ---- PERSISTENT RESERVE OUT service actions (SPC-4 5.9.7 - 5.9.11) ---------
    def _check_key(self, nexus: Nexus, rk: int) -> None:
        if self.keys.get(nexus) != rk:
            raise ReservationConflict()

    def register(self, nexus: Nexus, rk: int, sark: int, *, ignore: bool) -> None:
        """REGISTER (ignore=False) and REGISTER AND IGNORE EXISTING KEY (5.9.7)."""
        current = self.keys.get(nexus)
        if not ignore and rk != (current or 0):
            raise ReservationConflict()
        if current is None and sark == 0:
            return  # nothing to do, generation unchanged
        if sark == 0:
            self._unregister(nexus)
        else:
            self.keys[nexus] = sark
        self.generation += 1

    def _unregister(self, nexus: Nexus) -> None:
        del self.keys[nexus]
        if self.rtype in ALL_REGISTRANTS:
            if not self.keys:
                self._drop_reservation()
        elif self.rtype is not None and self.holder == nexus:
            released = self.rtype
            self._drop_reservation()
            if released in REGISTRANTS_ONLY:  # 5.9.11.2
                self.ua.establish(RESERVATIONS_RELEASED, self.keys)

    def _drop_reservation(self) -> None:
        self.rtype = None
        self.holder = None

    def reserve(self, nexus: Nexus, rk: int, rtype: int, scope: int) -> None:
        """RESERVE (5.9.9): only a registered nexus, with its own key."""
        kind = check_type(rtype, scope)
        self._check_key(nexus, rk)
        if self.r6_holder is not None:
            raise ReservationConflict()
        if self.rtype is not None:
            if self.is_holder(nexus) and self.rtype == kind:
                return
            raise ReservationConflict()
        self.rtype = kind
        self.holder = nexus

    def release(self, nexus: Nexus, rk: int, rtype: int, scope: int) -> None:
        """RELEASE (5.9.11.2): a no-op unless the nexus holds the reservation."""
        self._check_key(nexus, rk)
        if self.rtype is None or not self.is_holder(nexus):
            return
        if scope != SCOPE_LU or rtype != self.rtype:
            raise ScsiError(ILLEGAL_REQUEST, *INVALID_RELEASE_OF_PR)
        released = self.rtype
        self._drop_reservation()
        if released in REGISTRANTS_ONLY or released in ALL_REGISTRANTS:
            self.ua.establish(RESERVATIONS_RELEASED, (n for n in self.keys if n != nexus))

    def clear(self, nexus: Nexus, rk: int) -> None:
        """CLEAR (5.9.11.6): every registration and the reservation go."""
        self._check_key(nexus, rk)
        others = [n for n in self.keys if n != nexus]
        self.keys.clear()
        self._drop_reservation()
        self.generation += 1
        self.ua.establish(RESERVATIONS_PREEMPTED, others)

    def preempt(self, nexus: Nexus, rk: int, sark: int, rtype: int, scope: int) -> None:
        """PREEMPT and PREEMPT AND ABORT (5.9.11.4)."""
        self._check_key(nexus, rk)
        if self.rtype in ALL_REGISTRANTS and sark == 0:
            kind = check_type(rtype, scope)
            self._remove([n for n in self.keys if n != nexus])
            self.rtype, self.holder = kind, nexus
            return
        holder_key = None if self.rtype in ALL_REGISTRANTS else self.keys.get(self.holder)  # type: ignore[arg-type]
        if self.rtype is not None and holder_key is not None and sark == holder_key:
            kind = check_type(rtype, scope)
            changed = kind != self.rtype
            self._remove([n for n, k in self.keys.items() if k == sark and n != nexus])
            self.rtype, self.holder = kind, nexus
            if changed:
                self.ua.establish(RESERVATIONS_RELEASED, (n for n in self.keys if n != nexus))
            return
        if sark == 0:
            raise invalid_param(8)
        victims = [n for n, k in self.keys.items() if k == sark and n != nexus]
        if not victims:
            raise ReservationConflict()
        self._remove(victims)

    def _remove(self, victims: list[Nexus]) -> None:
        for n in victims:
            del self.keys[n]
            if n == self.holder and self.rtype not in ALL_REGISTRANTS:
                self._drop_reservation()
        if self.rtype in ALL_REGISTRANTS and not self.keys:
            self._drop_reservation()
        self.generation += 1
        self.ua.establish(REGISTRATIONS_PREEMPTED, victims)

    def reported_key(self) -> int:
        """READ RESERVATION key: 0 for the all-registrants types (SPC-4 6.13.3.3)."""
        if self.rtype is None or self.rtype in ALL_REGISTRANTS:
            return 0
        return self.keys.get(self.holder, 0)  # type: ignore[arg-type]
