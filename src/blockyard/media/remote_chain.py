"""Opening chains whose bottom is a remote iSCSI LUN (VirtualBox manual §5.10 + §5.4).

A remote LUN is a medium like a file, so it can be the parent of a local
differencing image: immutable and multiattach media over a LUN, snapshots of
a LUN, or a child made by ``blockyard medium create CHILD --parent
iscsi://...``.  The LUN is only read through such a chain (a snapshot merge
into it is the one writer).  Logging in is asynchronous, the chain openers
are not, so the LUN is opened first, here, and handed to them:

* ``open_path`` -- a file (with its chain from the files alone,
  ``block.chain_find.open_chain_path``) or an ``iscsi://`` URL; what quick
  mode serves and the file commands open.  The chain owns the LUN;
* ``open_registered`` -- a registered remote medium, refused when another
  LUN now answers at its URL (its VPD 83h identity gives another UUID);
* ``open_base`` -- for a registered medium, the LUN at the bottom of its
  registered chain (``chain_open.remote_root``), or None;
* ``registered_chain`` -- a registered medium's chain with its LUN, closed
  together on leaving the block (clone, offline snapshot merges).

Secrets never come from the stored locations (``media.inspect.stored_url``):
the URL's ``secret_file=`` / ``secret_env=`` keys or the environment give
them when the LUN is opened.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from blockyard.block.chain_find import open_chain_path
from blockyard.block.layer import Layer
from blockyard.block.remote import is_remote
from blockyard.errors import MediaError
from blockyard.media.chain_open import Lookup, lun_uuid, open_chain, remote_root
from blockyard.media.model import Medium


async def open_url(url: str, *, read_only: bool = True) -> Layer:
    """A remote LUN through the integrated initiator (``transport.iscsi_initiator``)."""
    from blockyard.transport.iscsi_initiator import open_remote

    return await open_remote(url, read_only=read_only)


async def _parent_lun(url: str) -> Layer:
    return await open_url(url, read_only=True)


async def open_path(path: str, *, read_only: bool = False, fmt: str | None = None) -> Layer:
    """``path``: a remote LUN's URL, or an image file with its whole chain (which may
    end at a remote LUN, opened read-only and owned by the chain)."""
    if is_remote(path):
        return await open_url(path, read_only=read_only)
    return await open_chain_path(path, read_only=read_only, fmt=fmt, open_remote=_parent_lun)


async def open_registered(m: Medium, *, read_only: bool) -> Layer:
    """The registered remote medium ``m`` logged into, and checked to be the LUN that was
    registered: another LUN now answering at the URL is refused, not served."""
    if not m.accessible:
        raise MediaError(f"{m.location}: medium is inaccessible: {m.last_error}")
    lun = await open_url(m.location, read_only=read_only)
    found = lun_uuid(lun, m)
    if found != m.uuid:
        await lun.close()
        raise MediaError(f"{m.location}: the LUN answering there is not the one registered "
                         f"(its identity gives UUID {found}, the registry has {m.uuid}); "
                         "put the LUN back, or remove the medium and add the URL again")
    return lun


async def open_base(medium: Medium, lookup: Lookup, *, read_only: bool = True) -> Layer | None:
    """The remote LUN at the bottom of ``medium``'s registered chain, logged into."""
    root = remote_root(medium, lookup)
    if root is None:
        return None
    return await open_registered(root, read_only=read_only)


@asynccontextmanager
async def registered_chain(medium: Medium, lookup: Lookup, *, read_only: bool = True,
                           writable: frozenset[str] = frozenset()) -> AsyncIterator[Layer]:
    """``open_chain`` with its remote base (if any); both closed on leaving."""
    base = await open_base(medium, lookup, read_only=read_only and not writable)
    try:
        layer = open_chain(medium, lookup, read_only=read_only, writable=writable, base=base)
        try:
            yield layer
        finally:
            if layer is not base:
                await layer.close()
    finally:
        if base is not None:
            await base.close()
