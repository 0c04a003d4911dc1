"""Differencing chains: a child image over its parents, read as one disk.

architecture §3: ``... -> write mode -> differencing chain -> format driver``.
A chain is a list of open images, top (the child clients write) first, each
one's ``parent`` hook pointing at the next (image-formats.md §1.4, §2.5,
§3.5); below the last image there may be a *borrowed* layer -- the shared
read-only base of a medium that per-client differencing images sit on
(immutable / multiattach write modes).

Theory of operation:

* reads go to the top image; wherever it has nothing the format driver asks
  its ``parent`` (VDI free block, VMDK GTE 0, VHD clear bitmap bit), and so
  on down the chain; a VDI zero block or VMDK zeroed grain masks the parent;
* writes, trims and zeroes go to the top image only; a partial write into a
  block the top does not have is completed from the parent by the driver
  (VDI ``_fill_for_partial``, VMDK ``_base_grain``; VHD keeps per-sector
  bitmaps and needs no copy-up);
* parents are opened read-only (a parent with children is never written
  again); the one exception is a snapshot merge, which writes into a parent
  whose content is masked by its only child until the merge completes;
* ``extents`` resolves what the top reports as a bare HOLE (unallocated,
  content from the parent) by asking the layers below, so block status and
  sparse copies see the disk as a client does;
* ``close`` closes the images the chain owns, never the borrowed layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from blockyard.block.formats.base import ImageLayer
from blockyard.block.layer import HOLE, ZERO, Buffer, Extent, Layer


def _merge(out: list[Extent], length: int, flags: int) -> None:
    if out and out[-1].flags == flags:
        out[-1] = Extent(out[-1].length + length, flags)
    else:
        out.append(Extent(length, flags))


def link(images: Sequence[Layer], below: Layer | None) -> None:
    """Point each image's ``parent`` hook at the next one (the last at ``below``)."""
    for i, img in enumerate(images):
        parent = images[i + 1] if i + 1 < len(images) else below
        if hasattr(img, "parent"):
            img.parent = parent  # type: ignore[attr-defined]


class ChainLayer(Layer):
    """A top image over its parents (and maybe a borrowed base); see the module docstring."""

    def __init__(self, images: Sequence[ImageLayer], below: Layer | None = None) -> None:
        if not images:
            raise ValueError("a chain needs at least one image")
        super().__init__(images[0])
        self.images: list[ImageLayer] = list(images)
        self.below = below
        link(self.images, below)

    @property
    def top(self) -> ImageLayer:
        return self.images[0]

    def describe(self) -> str:
        names = " -> ".join(f"{i.format_name}:{i.path}" for i in self.images)
        tail = f" -> {self.below.describe()}" if self.below is not None else ""
        return f"chain[{names}{tail}]"

    # ---- reads and writes go to the top; the drivers fall through ------------------
    async def _pread(self, offset: int, length: int) -> Buffer:
        return await self.top.pread(offset, length)

    async def _flush(self) -> None:
        for img in self.images:
            if not img.read_only:
                await img.flush()

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        return await self._resolve(0, offset, length)

    async def _resolve(self, level: int, offset: int, length: int) -> list[Extent]:
        """Extents of the disk as seen from ``images[level]`` down (may answer short)."""
        layer: Layer | None = self.images[level] if level < len(self.images) else self.below
        if layer is None:
            return [Extent(length, HOLE | ZERO)]  # below the last parent: zeros
        own = await layer.extents(offset, length)
        if level >= len(self.images):
            return own  # the borrowed base resolves itself
        out: list[Extent] = []
        pos = offset
        for ext in own:
            if ext.flags == HOLE:  # unallocated here: the parent decides
                sub = await self._resolve(level + 1, pos, ext.length)
                for s in sub:
                    _merge(out, s.length, s.flags)
                if sum(s.length for s in sub) < ext.length:
                    return out  # the parent answered short: so do we
            else:
                _merge(out, ext.length, ext.flags)
            pos += ext.length
        return out

    async def _close(self) -> None:
        first: BaseException | None = None
        for img in self.images:
            try:
                await img.close()
            except BaseException as exc:  # close the rest, then report the first failure
                first = first or exc
        if first is not None:
            raise first
