"""What the Parallels and VMDK drivers share: capabilities, range splitting, slot reuse.

``WritableImage`` is the base of both drivers: they flush, honour FUA, report
extents, trim unless opened read-only, and take requests of any size up to
32 MiB (4 KiB preferred).  ``pieces`` splits a request at cluster (grain)
boundaries, the way every read, write and zero of theirs walks its map.

``SlotEpochs`` is the rule both apply before reusing the space of a freed
cluster or grain (image-formats.md §7).  Every request runs in the epoch that
was current when it started (``_enter`` / ``_leave`` count them); ``flush``
ends an epoch.  A slot freed in epoch *e* goes to ``freed`` and becomes
reusable (``free``) only once no request from epoch *e* or earlier is still
running, since such a request may have looked up the old map entry and may
still read or write the slot.  VMDK also counts mapped reads still to be sent
(``sync_map``) with the same ``hold`` / ``drop`` pair.
"""

from __future__ import annotations

from collections.abc import Iterator

from blockyard.block.formats.base import ImageLayer
from blockyard.block.layer import Limits


def pieces(offset: int, length: int, unit: int) -> Iterator[tuple[int, int, int, int]]:
    """(unit index, offset in the unit, position in the request, length) for each
    ``unit``-sized cluster or grain that ``[offset, offset + length)`` touches."""
    pos = 0
    while pos < length:
        index, within = divmod(offset + pos, unit)
        n = min(unit - within, length - pos)
        yield index, within, pos, n
        pos += n


def hold(counts: dict[int, int], epoch: int) -> int:
    """One more user of ``epoch``; returns the epoch."""
    counts[epoch] = counts.get(epoch, 0) + 1
    return epoch


def drop(counts: dict[int, int], epoch: int) -> None:
    """One user of ``epoch`` fewer; an epoch with none left is forgotten."""
    left = counts[epoch] - 1
    if left:
        counts[epoch] = left
    else:
        del counts[epoch]


class SlotEpochs:
    """Mixin: the epoch bookkeeping over ``epoch``, ``active``, ``freed`` and ``free``."""

    epoch: int
    active: dict[int, int]  # epoch -> requests started in it, still running
    freed: list[tuple[int, int]]  # (epoch, slot) no map entry names any more
    free: list[int]  # slots that may be reused now

    def _enter(self) -> int:
        return hold(self.active, self.epoch)

    def _leave(self, e: int) -> None:
        drop(self.active, e)

    def _oldest_running(self) -> int:
        """The oldest epoch with a request still running (the next one when none is)."""
        return min(self.active, default=self.epoch + 1)

    def _reuse_freed(self, oldest: int) -> None:
        """Slots freed before epoch ``oldest`` become reusable; a new epoch begins."""
        keep = [(e, slot) for e, slot in self.freed if e >= oldest]
        self.free.extend(slot for e, slot in self.freed if e < oldest)
        self.freed = keep
        self.epoch += 1


class WritableImage(ImageLayer):
    """Capabilities of the Parallels and VMDK drivers."""

    can_flush = True  # type: ignore[assignment]
    can_fua = True  # type: ignore[assignment]
    can_extents = True  # type: ignore[assignment]

    @property
    def can_trim(self) -> bool:  # type: ignore[override]
        return not self.read_only

    @property
    def limits(self) -> Limits:
        return Limits(minimum=1, preferred=4096, maximum=32 << 20)
