"""Looking at image files: probe, read their header facts, check they still open.

``inspect_file`` opens an image read-only just long enough to read its
``ImageInfo``.  When the daemon serves the medium already, ``live_image``
finds the format driver at the bottom of the open stack so the header is
read from the object that owns the file instead of a second open.

Remote media (``iscsi://`` locations, format ``iscsi``) have no file:
``remote_info`` logs in, reads the LUN's facts (READ CAPACITY 16, VPD 83h
identity; ``RemoteLun.info``) and logs out; a served one answers from its
open ``RemoteLun``.  ``stored_url`` is the form the registry keeps: the
``user%secret`` userinfo loses its secret and ``target_password=`` is
dropped (``secret_file=`` / ``secret_env=`` stay: they name where the secret
is, not the secret), so the registry never holds a CHAP secret.
"""

from __future__ import annotations

import os
import uuid as uuidlib

from blockyard.block.formats import open_image, probe
from blockyard.block.formats.base import ImageInfo, ImageLayer
from blockyard.block.layer import Layer
from blockyard.block.remote import REMOTE_FORMAT as REMOTE_FORMAT  # re-exported
from blockyard.block.remote import REMOTE_NAMESPACE as REMOTE_NAMESPACE
from blockyard.block.remote import identity_uuid
from blockyard.block.remote import is_remote as is_remote
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


# ---- remote media -----------------------------------------------------------------------
PROBE_LOGIN_TIMEOUT = 5.0
_SECRET_SOURCES = {"secret_file", "secret_env", "target_secret_file", "target_secret_env"}


def stored_url(url: str) -> str:
    """``url`` checked, without its secrets (see the module docstring)."""
    from blockyard.iscsi.url import parse_url

    head, sep, query = url.partition("?")
    items = [item for item in query.split("&") if item] if sep else []
    # checked without reading any secret: the sources are checked when the medium opens
    plain = [i for i in items if i.partition("=")[0] not in _SECRET_SOURCES]
    parse_url(head + ("?" + "&".join(plain) if plain else ""),
              environ={"BLOCKYARD_ISCSI_SECRET": "-", "BLOCKYARD_ISCSI_TARGET_SECRET": "-"})
    auth, at, location = head[len("iscsi://"):].rpartition("@")
    if at:
        head = f"iscsi://{auth.partition('%')[0]}@{location}"
    keep = [i for i in items if i.partition("=")[0] != "target_password"]
    return head + ("?" + "&".join(keep) if keep else "")


def remote_uuid(info: ImageInfo, location: str) -> tuple[str, str]:
    """(registry UUID, uuid_source) of a remote LUN: from its identity when it has one."""
    if info.uuid:
        return identity_uuid(info.uuid), "image"
    return str(uuidlib.uuid4()), "registry"


async def remote_info(url: str) -> ImageInfo:
    """Log in to ``url``, read the LUN's facts, log out (no reconnect rounds)."""
    from blockyard.transport.iscsi_initiator import open_remote

    lun = await open_remote(url, read_only=True, reconnect_for=0,
                            login_timeout=PROBE_LOGIN_TIMEOUT, nop_interval=0)
    try:
        return lun.info()
    finally:
        await lun.close()


def _live_info(layer: Layer | None) -> ImageInfo | None:
    image = live_image(layer)
    if image is not None:
        return image.info()
    while layer is not None:  # a RemoteLun at the bottom of the stack
        if getattr(layer, "info", None) is not None and layer.inner is None:
            return layer.info()  # type: ignore[attr-defined,no-any-return]
        layer = layer.inner
    return None


async def medium_info(ctx: Context, m: Medium) -> ImageInfo:
    found = _live_info(ctx.live.open_layer(m.uuid)) if ctx.live else None
    if found is not None:
        return found
    if is_remote(m.location):
        return await remote_info(m.location)
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
    if not is_remote(m.location) and not os.path.exists(m.location):
        return False, f"{m.location}: no such file"
    return m.accessible, m.last_error
