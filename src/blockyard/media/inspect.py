"""Looking at image files: probe, read their header facts, check they still open.

``inspect_file`` opens an image read-only just long enough to read its
``ImageInfo``.  When the daemon serves the medium already, ``live_image``
finds the format driver at the bottom of the open stack so the header is
read from the object that owns the file instead of a second open.
"""

from __future__ import annotations

import os

from blockyard.block.formats import open_image, probe
from blockyard.block.formats.base import ImageInfo, ImageLayer
from blockyard.block.layer import Layer
from blockyard.errors import BlockyardError, MediaError
from blockyard.media.context import Context
from blockyard.media.model import Medium


async def inspect_file(path: str, fmt: str | None = None) -> tuple[str, ImageInfo]:
    """(format, info) of the image at ``path``; MediaError when it cannot be read."""
    if not os.path.exists(path):
        raise MediaError(f"{path}: no such file")
    fmt = fmt or probe(path)
    layer = open_image(path, read_only=True, fmt=fmt)
    try:
        return fmt, layer.info()
    finally:
        await layer.close()


def live_image(layer: Layer | None) -> ImageLayer | None:
    while layer is not None:
        if isinstance(layer, ImageLayer):
            return layer
        layer = layer.inner
    return None


async def medium_info(ctx: Context, m: Medium) -> ImageInfo:
    image = live_image(ctx.live.open_layer(m.uuid)) if ctx.live else None
    if image is not None:
        return image.info()
    return (await inspect_file(m.location, m.format))[1]


async def recheck(ctx: Context, m: Medium) -> dict[str, object]:
    """Fresh accessibility and sizes of ``m`` (columns to update, maybe none)."""
    try:
        info = await medium_info(ctx, m)
    except BlockyardError as exc:
        return {"accessible": False, "last_error": str(exc)}
    except OSError as exc:
        return {"accessible": False, "last_error": f"{m.location}: {exc.strerror}"}
    return {"accessible": True, "last_error": "", "virtual_size": info.virtual_size,
            "allocated_size": info.allocated_size}


def quick_accessible(m: Medium) -> tuple[bool, str]:
    """A stat-only check for listings: a vanished file shows inaccessible at once."""
    if not os.path.exists(m.location):
        return False, f"{m.location}: no such file"
    return m.accessible, m.last_error
