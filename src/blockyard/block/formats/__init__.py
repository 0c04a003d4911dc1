"""Image-format registry: probe a file by its magic and open it with the right driver.

The table maps a format name to ``module:Class``; modules are imported lazily
so a broken or missing driver costs only its own format.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

from blockyard.block.formats.base import ImageLayer
from blockyard.errors import MediaError

# Probe order matters: specific magics first, raw (matches anything) last.
DRIVERS: dict[str, str] = {
    "vdi": "blockyard.block.formats.vdi:VdiImage",
    "vhd": "blockyard.block.formats.vhd:VhdImage",
    "vmdk": "blockyard.block.formats.vmdk:VmdkImage",
    "parallels": "blockyard.block.formats.parallels:ParallelsImage",
    "iso": "blockyard.block.formats.iso:IsoImage",
    "raw": "blockyard.block.formats.rawimage:RawImage",
}
PROBE_BYTES = 64 << 10
log = logging.getLogger("blockyard.formats")


def driver(name: str) -> type[ImageLayer]:
    try:
        target = DRIVERS[name]
    except KeyError:
        raise MediaError(f"unknown image format {name!r} (known: {', '.join(DRIVERS)})") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def probe(path: str | os.PathLike[str]) -> str:
    """Return the format name of an existing image file, judged by content."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            head = f.read(PROBE_BYTES)
            size = os.fstat(f.fileno()).st_size
            tail = os.pread(f.fileno(), 512, size - 512) if size >= 512 else b""
    except OSError as exc:
        raise MediaError(f"{p}: cannot read: {exc.strerror}") from None
    for stage in ("head", "tail"):  # magic at the start wins over a footer at the end
        for name in DRIVERS:
            try:
                cls = driver(name)
                if stage == "head" and name != "raw" and cls.probe(head, size):
                    return name
                tail_probe = getattr(cls, "probe_tail", None)
                if stage == "tail" and tail_probe is not None and tail_probe(tail, size):
                    return name
            except Exception as exc:  # a broken driver costs only its own format
                log.error("image format %s unavailable: %s", name, exc)
    return "raw"


def open_image(path: str | os.PathLike[str], *, read_only: bool = False,
               fmt: str | None = None) -> ImageLayer:
    """Open an image file with the driver its content calls for."""
    return driver(fmt or probe(path)).open(path, read_only=read_only)


def create_image(path: str | os.PathLike[str], size: int, fmt: str = "raw",
                 variant: str = "dynamic", **opts: Any) -> ImageLayer:
    return driver(fmt).create(path, size, variant=variant, **opts)
