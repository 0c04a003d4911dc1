"""What every image-format driver offers, and the shared report types.

A format driver is a module under ``block/formats/`` with one ``ImageLayer``
subclass registered in ``block/formats/__init__.py``.  The class provides:

* ``probe(head: bytes, size: int) -> bool`` (static): True when the first
  bytes of a file (at least 4 KiB, fewer if the file is shorter) carry this
  format's magic.  Probing never looks at the file name.
* ``open(path, *, read_only=False)`` (classmethod): validate every header
  field and map before returning; any inconsistency raises ``MediaError``
  naming the file and the problem, and nothing is written to the file.
* ``create(path, size, *, variant="dynamic", **opts)`` (classmethod): make a
  new image and return it opened read-write; refuses an existing path.

and on an open image, besides the ``Layer`` operations:

* ``info() -> ImageInfo``;
* ``check(repair=False) -> CheckReport`` (synchronous, whole-file scan);
* ``compact(progress=None)`` and ``resize(new_size, force=False)`` (async).

Crash-safety rule for every writer: data reaches the file before the map
entry that points at it; metadata is durable once a FLUSH or a FUA write
completes; a "not closed cleanly" mark is set before the first write and
cleared by a clean close, and ``open`` reports it in ``ImageInfo.dirty``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from blockyard.block.layer import Layer

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class ImageInfo:
    path: str
    format: str
    variant: str  # fixed | dynamic | split2g | stream | diff | flat ...
    virtual_size: int
    allocated_size: int  # bytes the file(s) take on disk
    uuid: str | None = None
    modification_uuid: str | None = None
    parent_uuid: str | None = None
    parent_hint: str | None = None
    geometry: tuple[int, int, int] | None = None  # cylinders, heads, sectors
    block_size: int | None = None
    sector_size: int = 512
    dirty: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CheckReport:
    path: str
    errors: list[str] = field(default_factory=list)  # corruption
    leaks: list[str] = field(default_factory=list)  # wasted space, harmless
    repaired: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.errors and not self.leaks


class ImageLayer(Layer):
    """Base class of the format drivers (a leaf layer over one or more files)."""

    format_name = "?"
    path: str

    @staticmethod
    def probe(head: bytes, size: int) -> bool:
        raise NotImplementedError

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False) -> ImageLayer:
        raise NotImplementedError

    @classmethod
    def create(cls, path: str | os.PathLike[str], size: int, *, variant: str = "dynamic",
               **opts: Any) -> ImageLayer:
        raise NotImplementedError

    def info(self) -> ImageInfo:
        raise NotImplementedError

    def check(self, repair: bool = False) -> CheckReport:
        return CheckReport(self.path)

    async def compact(self, progress: Progress | None = None) -> int:
        """Drop all-zero blocks; returns bytes released."""
        return 0

    async def resize(self, new_size: int, force: bool = False) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.format_name}:{self.path}"
