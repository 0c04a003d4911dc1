"""Snapshot operations on a served disk: finding its swappable stack, rebuilding chains.

A normal medium the daemon serves sits in a ``SwapLayer`` (media/builder.py);
a snapshot operation pauses it (requests in flight drain, new ones wait),
changes files and registry, installs the new chain and lets the requests
go on (block/chain_swap.py).  The helpers here are what take, restore and
delete share:

* ``live_swap``: the ``SwapLayer`` serving a medium, None when it is not
  served; refuses a medium served in a way that cannot be swapped;
* ``stack_on``: a new child over an already open chain (take: nothing is
  closed or reopened, the old top becomes a read-only parent);
* ``chain_base``: the remote LUN an open stack is built on -- it stays
  logged in across every swap (the daemon closes it with the medium);
* ``reopen``: open the registered chain of the current state again (with a
  lookup that may already see rows not yet committed), falling back to
  reopening the previous state when that fails, so a failed operation
  never leaves sessions on a closed chain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from blockyard.block.chain import ChainLayer
from blockyard.block.chain_find import close_now
from blockyard.block.chain_swap import SwapLayer
from blockyard.block.formats.base import ImageLayer
from blockyard.block.layer import Layer
from blockyard.block.remote import RemoteLun, remote_lun
from blockyard.errors import ConflictError
from blockyard.media import builder
from blockyard.media.chain_open import open_chain, top_image
from blockyard.media.context import Context
from blockyard.media.model import Medium

log = logging.getLogger("blockyard.snapshots")
Lookup = Callable[[str], Medium]


def live_swap(ctx: Context, m: Medium) -> SwapLayer | None:
    layer = ctx.live.open_layer(m.uuid) if ctx.live is not None else None
    if layer is None:
        return None
    if not isinstance(layer, SwapLayer):
        raise ConflictError(f"{m.name} is served read-only or in a way that cannot change "
                            "under its sessions; detach it first")
    return layer


def rekey(ctx: Context, old: str, new: str) -> None:
    """Tell the daemon the open stack of medium ``old`` now serves medium ``new``."""
    fn = getattr(ctx.live, "rekey", None)
    if fn is not None and old != new:
        fn(old, new)


def overlay(ctx: Context, *rows: Medium) -> Lookup:
    """``ctx.lookup`` that already knows ``rows`` (registered in a moment)."""
    extra = {m.uuid: m for m in rows}

    def lookup(uuid: str) -> Medium:
        return extra.get(uuid) or ctx.lookup(uuid)
    return lookup


def stack_on(child: ImageLayer, old: Layer) -> ChainLayer:
    """``child`` over the open chain ``old``, whose top becomes a read-only parent."""
    lun = old if isinstance(old, RemoteLun) else None
    if lun is not None:  # the disk is a remote LUN: it becomes the child's borrowed base
        lun.read_only = True
        return ChainLayer([child], below=lun)
    top = top_image(old)
    top.read_only = True  # a parent is never written again
    if isinstance(old, ChainLayer):
        return ChainLayer([child, *old.images], old.below)
    return ChainLayer([child, top])


def chain_base(layer: Layer) -> Layer | None:
    """The remote LUN an open stack is built on (borrowed by its chain), or None."""
    return remote_lun(layer)


def reopen(swap: SwapLayer, current: Medium, lookup: Lookup, *,
           writable: frozenset[str] = frozenset(), fallback: Medium | None = None,
           fallback_lookup: Lookup | None = None, host_cache: bool = True,
           base: Layer | None = None) -> None:
    """Inside ``swap.paused()`` with the old chain closed: install ``current``'s chain
    (under its controller's host-cache policy, ``host_cache``; over the remote LUN
    ``base`` the old one was built on, which stays open)."""
    try:
        swap.replace(_open(current, lookup, writable, host_cache, base))
    except BaseException:
        if fallback is None:
            raise
        log.error("reopening %s failed; going back to %s", current.location, fallback.location)
        swap.replace(_open(fallback, fallback_lookup or lookup, frozenset(), host_cache, base))
        raise


def _open(m: Medium, lookup: Lookup, writable: frozenset[str], host_cache: bool,
          base: Layer | None) -> Layer:
    if writable:
        return open_chain(m, lookup, writable=writable, base=base)
    return builder.open_visible(m, lookup, read_only=False, host_cache=host_cache, base=base)


def host_cache(ctx: Context, m: Medium) -> bool:
    fn = getattr(ctx.live, "host_cache_of", None)
    return bool(fn(m.uuid)) if fn is not None else True


async def close_quietly(layer: Layer) -> None:
    try:
        await layer.close()
    except Exception as exc:  # the files are being replaced: log, go on
        log.error("closing %s: %s", layer.describe(), exc)
        close_now(layer)
