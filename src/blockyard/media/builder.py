"""The one place that turns a registered medium into a layer stack.

The stack, client side first (architecture §3)::

    bandwidth group -> cache policy -> write mode -> differencing chain
        -> format driver -> file

This module builds the part below the bandwidth group:

* ``open_visible``: the disk as a client sees it -- the medium's file, or,
  when the registry gives it a parent, the whole chain
  (``media.chain_open.open_chain``, the ``CHAIN_OPENER``);
* ``build``: that disk opened the way its write mode needs the *shared*
  stack: read-only for readonly, immutable and multiattach media (their
  base is never written: ``WRITE_MODE_LAYERS``), read-write otherwise.  A
  medium with children is served read-only whatever its mode (a parent is
  never written again: its children's data depend on every byte);
* ``serve``: ``build`` plus a ``MediumHub`` (block/writemode.py) that
  decides per client what each session gets: the shared stack (normal,
  writethrough, shareable), a read-only view, or a differencing image of
  its own under ``STATE/diffs`` (immutable, multiattach: ``ClientDiffs``).
  A normal medium's stack sits in a ``SwapLayer`` so a snapshot can replace
  its chain under connected sessions (media/snapshots.py).

Host cache, remote media, bandwidth groups (the daemon passes them in):

* ``host_cache=False`` (the controller's policy): a raw medium without a
  parent opens as ``UncachedRawImage`` -- ``DirectFile``'s O_DIRECT I/O and
  write cache (block/hostcache.py) with ``RawImage``'s facts; other formats
  and chains go through the page cache as before;
* a remote medium (``iscsi://``, format ``iscsi``) cannot be opened here
  (logging in is asynchronous): the caller opens it with
  ``open_remote_medium`` and hands it in as ``opened``; a chain that ends at
  a remote LUN gets it as ``base`` (``media.remote_chain.open_base``), which
  the chain borrows: the caller closes it after the stack.  The host cache
  never applies to either;
* ``bandwidth(layer, owns_inner)`` wraps what sessions get in the medium's
  bandwidth group (``BandwidthGroups.wrap(layer, group, None)``): the shared
  stack for normal, writethrough, shareable and readonly media, each
  client's differencing image for immutable and multiattach ones (the shared
  base below it is not wrapped, so no byte is charged twice).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from blockyard.block.chain_find import close_now
from blockyard.block.chain_swap import SwapLayer
from blockyard.block.formats import open_image
from blockyard.block.formats.base import ImageLayer
from blockyard.block.formats.rawimage import RawImage
from blockyard.block.hostcache_direct import DirectFile, DirectIOUnsupported
from blockyard.block.layer import Layer
from blockyard.block.remote import remote_lun
from blockyard.block.writemode import DiffFactory, MediumHub
from blockyard.errors import MediaError
from blockyard.media.chain_open import ClientDiffs, open_chain, top_image
from blockyard.media.model import Medium

log = logging.getLogger("blockyard.media")


class ReadOnly(Layer):
    """A filter that refuses every write (EPERM) and advertises read-only."""

    def __init__(self, inner: Layer) -> None:
        super().__init__(inner)
        self.read_only = True

    def describe(self) -> str:
        return f"read-only -> {self.inner.describe() if self.inner else '?'}"


def _as_is(layer: Layer, medium: Medium) -> Layer:
    return layer


def _read_only(layer: Layer, medium: Medium) -> Layer:
    return layer if layer.read_only else ReadOnly(layer)


WriteModeLayer = Callable[[Layer, Medium], Layer]
WRITE_MODE_LAYERS: dict[str, WriteModeLayer] = {
    "normal": _as_is,
    "writethrough": _as_is,
    "shareable": _as_is,
    "readonly": _read_only,
    "immutable": _read_only,  # the shared base; sessions write per-client diffs (serve)
    "multiattach": _read_only,  # idem, kept across sessions
}
WRITABLE_MODES = ("normal", "writethrough", "shareable")
Lookup = Callable[[str], Medium]
Children = Callable[[str], list[Medium]]
# Opens a differencing child with its chain (``lookup`` maps a UUID to its Medium).
ChainOpener = Callable[..., Layer]
CHAIN_OPENER: ChainOpener = open_chain


def opens_read_only(medium: Medium) -> bool:
    """True when the stack for ``medium`` never writes to its file."""
    return medium.kind == "dvd" or WRITE_MODE_LAYERS.get(medium.write_mode) is _read_only


def open_file(medium: Medium, *, read_only: bool) -> ImageLayer:
    """The format driver alone, over the medium's file."""
    return open_image(medium.location, read_only=read_only, fmt=medium.format)


class UncachedRawImage(DirectFile, RawImage):
    """A raw medium with the host cache off: DirectFile's I/O, RawImage's facts."""


def open_uncached(medium: Medium, *, read_only: bool) -> ImageLayer:
    """A raw file without the page cache; buffered where the filesystem refuses O_DIRECT."""
    try:
        return UncachedRawImage(medium.location, read_only=read_only)
    except DirectIOUnsupported as exc:
        log.warning("%s; host cache stays on for this medium", exc)
        return RawImage(medium.location, read_only=read_only)


def open_visible(medium: Medium, lookup: Lookup, *, read_only: bool,
                 host_cache: bool = True, base: Layer | None = None) -> Layer:
    """The disk as a client sees it: the chain when there is a parent, else the file.
    ``base``: the remote LUN the chain ends at, logged into by the caller."""
    if not host_cache and medium.format == "raw" and not medium.parent_uuid:
        return open_uncached(medium, read_only=read_only)
    if base is not None:
        return CHAIN_OPENER(medium, lookup, read_only=read_only, base=base)
    return CHAIN_OPENER(medium, lookup, read_only=read_only)


async def open_remote_medium(medium: Medium, *, read_only: bool) -> Layer:
    """A registered ``iscsi://`` medium through the integrated initiator (checked to be
    the LUN that was registered: ``remote_chain.open_registered``)."""
    from blockyard.media.remote_chain import open_registered

    return await open_registered(medium, read_only=read_only or opens_read_only(medium))


def has_children(medium: Medium, children: Children | None) -> bool:
    """A parent is never written again: its children's data depend on every byte."""
    if children is None or medium.write_mode not in WRITABLE_MODES or medium.kind == "dvd":
        return False
    kids = children(medium.uuid)
    if kids:
        log.warning("%s has differencing children (%s): serving it read-only", medium.name,
                    ", ".join(k.name for k in kids[:3]) + (" ..." if len(kids) > 3 else ""))
    return bool(kids)


def build(medium: Medium, lookup: Lookup, *, children: Children | None = None,
          read_only: bool = False, host_cache: bool = True,
          opened: Layer | None = None, base: Layer | None = None) -> Layer:
    """The shared stack that serves ``medium`` (see the module docstring)."""
    if not medium.accessible:
        raise MediaError(f"{medium.location}: medium is inaccessible: {medium.last_error}")
    wrap = WRITE_MODE_LAYERS.get(medium.write_mode)
    if wrap is None:
        raise MediaError(f"{medium.location}: unknown write mode {medium.write_mode!r}")
    read_only = read_only or has_children(medium, children)
    disk = opened or open_visible(medium, lookup, read_only=read_only or
                                  opens_read_only(medium), host_cache=host_cache, base=base)
    layer = wrap(disk, medium)
    return ReadOnly(layer) if read_only and not layer.read_only else layer


@dataclass
class Served:
    """What the daemon publishes for one open medium."""

    layer: Layer  # the shared stack (a SwapLayer for normal media)
    hub: MediumHub
    diffs: ClientDiffs | None = None  # immutable / multiattach: the clients' images


def _fixed_size(layer: Layer) -> bool:
    try:
        return top_image(layer).info().variant in ("fixed", "flat")
    except MediaError:
        return remote_lun(layer) is not None  # a LUN's size is fixed by its target


# Wraps a session's layer in the medium's bandwidth group: (layer, owns_inner) -> layer.
SessionWrap = Callable[[Layer, bool], Layer]
DIFF_MODES = ("immutable", "multiattach")


def _wrapped(factory: DiffFactory, bandwidth: SessionWrap) -> DiffFactory:
    async def open_for(client: str, reset: bool) -> Layer:
        return bandwidth(await factory(client, reset), True)
    return open_for


def serve(medium: Medium, lookup: Lookup, *, state_dir: Path,
          children: Children | None = None, read_only: bool = False,
          host_cache: bool = True, opened: Layer | None = None,
          base: Layer | None = None, bandwidth: SessionWrap | None = None) -> Served:
    """``build`` plus the write-mode hub every session of the medium goes through."""
    read_only = read_only or medium.kind == "dvd" or has_children(medium, children)
    mode = "readonly" if read_only else medium.write_mode
    layer = build(medium, lookup, read_only=read_only, host_cache=host_cache, opened=opened,
                  base=base)
    try:
        if mode == "normal":
            layer = SwapLayer(layer)
        diffs = ClientDiffs(medium, layer, state_dir) if mode in DIFF_MODES else None
        factory: DiffFactory | None = diffs
        shared = layer
        if bandwidth is not None:
            if factory is not None:
                factory = _wrapped(factory, bandwidth)
            else:
                shared = bandwidth(layer, False)
        hub = MediumHub(medium.name, shared, mode=mode, autoreset=medium.autoreset,
                        fixed_size=_fixed_size(layer), diff_factory=factory)
    except BaseException:
        close_now(layer)
        raise
    return Served(layer, hub, diffs)
