"""The one place that turns a registered medium into a layer stack.

The stack, client side first (architecture §3)::

    bandwidth group -> cache policy -> write mode -> differencing chain
        -> format driver -> file

This module builds the part below the bandwidth group.  Today that is the
format driver (``open_image`` with the registered format) and a write-mode
layer chosen from ``WRITE_MODE_LAYERS`` by the medium's write mode.  Other
capabilities plug in here, not elsewhere:

* write modes: replace an entry of ``WRITE_MODE_LAYERS`` (a function
  ``(layer, medium) -> layer``).  Until then immutable and multiattach media
  are served *read-only* -- never writable, because writing to the base of
  an immutable medium would break its promise;
* differencing chains: set ``CHAIN_OPENER`` (``(medium, lookup) -> layer``).
  Until then a medium with a parent is refused with a clear error: serving
  a child alone would show zeroes where its parent has data;
* host cache and bandwidth groups wrap the result in the daemon.
"""

from __future__ import annotations

from collections.abc import Callable

from blockyard.block.formats import open_image
from blockyard.block.formats.base import ImageLayer
from blockyard.block.layer import Layer
from blockyard.errors import MediaError
from blockyard.media.model import Medium


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
    "immutable": _read_only,  # until the write-mode capability adds per-session diffs
    "multiattach": _read_only,  # idem
}
# Opens a differencing child with its chain; ``lookup`` maps a UUID to its Medium.
ChainOpener = Callable[[Medium, Callable[[str], Medium]], Layer]
CHAIN_OPENER: ChainOpener | None = None


def opens_read_only(medium: Medium) -> bool:
    """True when the stack for ``medium`` never writes to its file."""
    return medium.kind == "dvd" or WRITE_MODE_LAYERS.get(medium.write_mode) is _read_only


def open_file(medium: Medium, *, read_only: bool) -> ImageLayer:
    """The format driver alone, over the medium's file."""
    return open_image(medium.location, read_only=read_only, fmt=medium.format)


def open_visible(medium: Medium, lookup: Callable[[str], Medium], *,
                 read_only: bool) -> Layer:
    """The disk as a client sees it: the chain when there is a parent, else the file."""
    if medium.parent_uuid:
        if CHAIN_OPENER is None:
            raise MediaError(f"{medium.location}: is a differencing image (parent "
                             f"{medium.parent_uuid}); serving chains is not built yet")
        layer = CHAIN_OPENER(medium, lookup)
        return ReadOnly(layer) if read_only and not layer.read_only else layer
    return open_file(medium, read_only=read_only)


def build(medium: Medium, lookup: Callable[[str], Medium]) -> Layer:
    """The layer stack that serves ``medium`` to clients."""
    if not medium.accessible:
        raise MediaError(f"{medium.location}: medium is inaccessible: {medium.last_error}")
    wrap = WRITE_MODE_LAYERS.get(medium.write_mode)
    if wrap is None:
        raise MediaError(f"{medium.location}: unknown write mode {medium.write_mode!r}")
    base = open_visible(medium, lookup, read_only=opens_read_only(medium))
    return wrap(base, medium)
