"""Differencing chains: a child image over its parents, read as one disk.

architecture §3: ``... -> write mode -> differencing chain -> format driver``.
A chain is a list of open images, top (the child clients write) first, then
its parent, grandparent ... (image-formats.md §1.4, §2.5, §3.5); below the
last image there may be a *borrowed* layer -- the shared read-only base of a
medium that per-client differencing images sit on (immutable / multiattach
write modes).

Theory of operation:

* reads go to the top image; wherever it has nothing the format driver asks
  its ``parent`` hook (VDI free block, VMDK GTE 0, VHD clear bitmap bit); a
  VDI zero block or VMDK zeroed grain masks the parent;
* the hook of image *i* is a ``ParentView`` of images *i+1..* (and the
  borrowed layer), which resolves a read level by level -- what this image
  holds itself (its own extents), then the next image for the rest -- so
  the Python stack stays flat however deep the chain is;
* writes, trims and zeroes go to the top image only; a partial write into a
  block the top does not have is completed from the parent by the driver
  (VDI ``_fill_for_partial``, VMDK ``_base_grain``; VHD keeps per-sector
  bitmaps and needs no copy-up);
* parents are opened read-only (a parent with children is never written
  again); the one exception is a snapshot merge, which writes into a parent
  whose content is masked by its only child until the merge completes;
* ``extents`` resolves, level by level too, what the top reports as a bare
  HOLE (unallocated here, content from the parent), so block status and
  sparse copies see the disk as a client does;
* ``close`` closes the images the chain owns, and the layer below only when
  it was handed over (``owns_below``: a remote LUN opened for this chain
  alone); a shared base stays open for its owner.
"""

from __future__ import annotations

from collections.abc import Sequence

from blockyard.block.formats.base import ImageLayer
from blockyard.block.layer import HOLE, ZERO, Buffer, Extent, Layer

Range = tuple[int, int]
EXTENTS_MAX = 1 << 30  # a chain answers block status for at most this much at once


async def own_extents(layer: Layer, offset: int, length: int) -> list[Extent]:
    """Every extent of ``layer`` itself over the range; past its end: zeros."""
    out: list[Extent] = []
    pos, end = offset, offset + length
    inside = min(end, layer.size)
    while pos < inside:
        got = await layer.extents(pos, inside - pos)
        if not got:
            break
        for e in got:
            n = min(e.length, inside - pos)
            out.append(Extent(n, e.flags))
            pos += n
            if pos >= inside:
                break
    if end > pos:
        out.append(Extent(end - pos, HOLE | ZERO))
    return out


async def split(layer: Layer, ranges: list[Range]) -> tuple[list[tuple[int, Extent]], list[Range]]:
    """(held, holes): the ranges ``layer`` holds itself (with flags) and those it does not."""
    held: list[tuple[int, Extent]] = []
    holes: list[Range] = []
    for offset, length in ranges:
        pos = offset
        for e in await own_extents(layer, offset, length):
            if e.flags == HOLE:
                holes.append((pos, e.length))
            else:
                held.append((pos, e))
            pos += e.length
    return held, holes


class ParentView(Layer):
    """Read-only view of ``images`` (a parent and its parents) over ``below``."""

    def __init__(self, images: Sequence[Layer], below: Layer | None) -> None:
        super().__init__(images[0])
        self.images = list(images)
        self.below = below
        self.read_only = True

    async def _pread(self, offset: int, length: int) -> Buffer:
        out = bytearray(length)
        todo: list[Range] = [(offset, length)]
        for img in self.images:
            held, todo = await split(img, todo)
            for pos, e in held:
                if not e.flags & ZERO:
                    out[pos - offset:pos - offset + e.length] = await img.pread(pos, e.length)
            if not todo:
                return out
        for pos, n in todo:
            if self.below is not None:
                inside = max(0, min(n, self.below.size - pos))
                if inside:
                    out[pos - offset:pos - offset + inside] = await self.below.pread(pos, inside)
        return out

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        return await resolve(self.images, self.below, offset, length)

    async def _close(self) -> None:
        return None  # the chain closes the images


def parent_of(rest: Sequence[Layer], below: Layer | None) -> Layer | None:
    """What an image's ``parent`` hook points at, given the images below it."""
    if not rest:
        return below
    if len(rest) == 1 and below is None:
        return rest[0]
    return ParentView(rest, below)


def link(images: Sequence[Layer], below: Layer | None) -> None:
    """Set each image's ``parent`` hook (module docstring)."""
    for i, img in enumerate(images):
        if hasattr(img, "parent"):
            img.parent = parent_of(images[i + 1:], below)  # type: ignore[attr-defined]


async def resolve(images: Sequence[Layer], below: Layer | None, offset: int,
                  length: int) -> list[Extent]:
    """The disk's extents seen from ``images[0]``: each level answers what it holds."""
    length = min(length, EXTENTS_MAX)
    found: list[tuple[int, Extent]] = []
    todo: list[Range] = [(offset, length)]
    for img in images:
        held, todo = await split(img, todo)
        found += held
        if not todo:
            break
    for pos, n in todo:
        if below is not None:
            found += [(pos, e) for pos, e in _at(pos, await own_extents(below, pos, n))]
        else:
            found.append((pos, Extent(n, HOLE | ZERO)))
    out: list[Extent] = []
    for _pos, e in sorted(found, key=lambda x: x[0]):
        if out and out[-1].flags == e.flags:
            out[-1] = Extent(out[-1].length + e.length, e.flags)
        else:
            out.append(e)
    return out


def _at(offset: int, extents: list[Extent]) -> list[tuple[int, Extent]]:
    out = []
    for e in extents:
        out.append((offset, e))
        offset += e.length
    return out


class ChainLayer(Layer):
    """A top image over its parents (and maybe a borrowed base); see the module docstring."""

    def __init__(self, images: Sequence[ImageLayer], below: Layer | None = None, *,
                 owns_below: bool = False) -> None:
        if not images:
            raise ValueError("a chain needs at least one image")
        super().__init__(images[0])
        self.images: list[ImageLayer] = list(images)
        self.below = below
        self.owns_below = owns_below and below is not None
        link(self.images, below)

    @property
    def top(self) -> ImageLayer:
        return self.images[0]

    def describe(self) -> str:
        names = " -> ".join(f"{i.format_name}:{i.path}" for i in self.images)
        tail = f" -> {self.below.describe()}" if self.below is not None else ""
        return f"chain[{names}{tail}]"

    async def _pread(self, offset: int, length: int) -> Buffer:
        return await self.top.pread(offset, length)  # the drivers fall through

    async def _flush(self) -> None:
        for img in self.images:
            if not img.read_only:
                await img.flush()

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        return await resolve(self.images, self.below, offset, length)

    async def _close(self) -> None:
        first: BaseException | None = None
        for img in self.images:
            try:
                await img.close()
            except BaseException as exc:  # close the rest, then report the first failure
                first = first or exc
        if self.owns_below and self.below is not None:
            try:
                await self.below.close()
            except BaseException as exc:
                first = first or exc
        if first is not None:
            raise first
