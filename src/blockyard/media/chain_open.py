"""Registered media as differencing chains, and per-client differencing images.

``open_chain(medium, lookup)`` is the builder's chain opener: it follows the
registry's parent links (``Medium.parent_uuid``) from ``medium`` up to a
base, opens every file -- the top read-write unless told otherwise, every
parent read-only -- and checks each link against the files
(``chain_facts.check_link``: the parent's UUID, its modification UUID or
CID, image-formats.md §1.4, §2.5, §3.5).  The registry is trusted for *which*
file is the parent (VirtualBox finds VDI parents the same way); the files
decide whether that parent is still the one the child was made on.  The
bottom of a chain may be a remote LUN (format ``iscsi``): the caller logs in
(``media.remote_chain``) and hands the LUN in as ``base``; the chain borrows
it, and a child's link UUID must be the LUN's identity UUID.

``ClientDiffs`` makes the ``diff_factory`` a ``MediumHub`` needs for the
immutable and multiattach write modes (VirtualBox user manual §5.4): one
differencing VDI per client under ``STATE/diffs/``, named so an operator
sees medium and client (``disk.vdi-1a2b3c4d--127.0.0.2.vdi``), over the
medium's shared read-only stack.  ``reset`` (immutable with autoreset)
throws the old one away first; a multiattach client's image persists, and
is refused -- not silently discarded -- when the base changed under it.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from pathlib import Path

from blockyard.block.chain import ChainLayer
from blockyard.block.chain_facts import (
    ParentFacts,
    check_link,
    facts_of,
    link_problem,
    remote_facts,
)
from blockyard.block.chain_find import close_now
from blockyard.block.chain_link import create_child, is_child, link_of
from blockyard.block.formats import open_image
from blockyard.block.formats.base import ImageLayer
from blockyard.block.layer import Layer
from blockyard.block.remote import REMOTE_FORMAT, identity_uuid, remote_lun
from blockyard.errors import MediaError
from blockyard.media.model import Medium

MAX_DEPTH = 256
Lookup = Callable[[str], Medium]


def lineage(medium: Medium, lookup: Lookup) -> list[Medium]:
    """``medium`` and its registered ancestors, child first; a cycle is an error."""
    rows = [medium]
    seen = {medium.uuid}
    while rows[-1].parent_uuid:
        parent = lookup(rows[-1].parent_uuid)
        if parent.uuid in seen or len(rows) > MAX_DEPTH:
            raise MediaError(f"{medium.location}: its parent links form a cycle through "
                             f"{parent.location}; fix the registry with 'blockyard medium "
                             "remove' and add the images again")
        seen.add(parent.uuid)
        rows.append(parent)
    return rows


def _open_row(m: Medium, read_only: bool) -> ImageLayer:
    if not os.path.exists(m.location):
        raise MediaError(f"{m.location}: no such file (a medium of this chain is missing); "
                         "put it back or remove the media that depend on it")
    return open_image(m.location, read_only=read_only, fmt=m.format)


def parent_facts(image: ImageLayer, m: Medium) -> ParentFacts:
    """What a child of ``m`` records; the registry's UUID names a raw parent."""
    return facts_of(image, uuid=m.uuid)


def medium_facts(layer: Layer, m: Medium) -> ParentFacts:
    """What a child of ``m`` (opened as ``layer``) records; a remote LUN is known from
    its registry row (URL without secrets, size) and the LUN's identity (``lun_uuid``)."""
    if m.format == REMOTE_FORMAT:
        return remote_facts(m.location, layer.size, lun_uuid(layer, m))
    return parent_facts(top_image(layer), m)


def lun_uuid(layer: Layer, m: Medium) -> str:
    """The UUID of the remote LUN medium ``m`` as a parent, opened as ``layer``: the
    identity UUID of the LUN actually logged into when the registry took ``m``'s UUID
    from its identity -- so another LUN now answering at the URL does not pass for it
    (its children's data are only valid over the LUN they were made on) -- else the
    registry's."""
    lun = remote_lun(layer)
    identity = lun.uuid if lun is not None else None
    if identity and m.uuid_source == "image":
        return identity_uuid(identity)
    return m.uuid


def remote_root(medium: Medium, lookup: Lookup) -> Medium | None:
    """The remote LUN at the bottom of ``medium``'s registered chain, if there is one."""
    root = lineage(medium, lookup)[-1]
    return root if root.format == REMOTE_FORMAT else None


def open_chain(medium: Medium, lookup: Lookup, *, read_only: bool = False,
               writable: frozenset[str] = frozenset(), base: Layer | None = None) -> Layer:
    """The registered chain of ``medium``; ``writable`` names parents to open read-write
    (a snapshot merge target).  A medium without parents is opened alone.

    A chain that ends at a remote LUN borrows ``base``, the LUN opened by the caller
    (logging in is asynchronous); its write flag is set here: writable only when it is
    the medium itself (and not ``read_only``) or named in ``writable``."""
    rows = lineage(medium, lookup)
    remote = rows.pop() if rows[-1].format == REMOTE_FORMAT else None
    if remote is not None:
        if base is None:
            raise MediaError(f"{remote.location}: a remote LUN at the bottom of the chain of "
                             f"{medium.location} must be logged into first")
        _set_writable(base, remote.uuid in writable or (not rows and not read_only))
        if not rows:
            return base
    images: list[ImageLayer] = []
    try:
        for i, m in enumerate(rows):
            images.append(_open_row(m, (read_only or i > 0) and m.uuid not in writable))
        _check_links(rows, images)
        if remote is not None and base is not None:
            facts = remote_facts(remote.location, base.size, lun_uuid(base, remote))
            _check_link(rows[-1], images[-1], remote, facts)
        elif is_child(images[-1]):
            raise MediaError(f"{rows[-1].location}: a differencing image registered without "
                             "its parent; remove it and add it again with --parent")
    except BaseException:
        for img in images:
            close_now(img)
        raise
    if remote is not None:
        return ChainLayer(images, below=base)
    return images[0] if len(images) == 1 else ChainLayer(images)


def _set_writable(base: Layer, writable: bool) -> None:
    base.read_only = not writable or bool(getattr(getattr(base, "props", None),
                                                  "write_protected", False))


def _check_links(rows: list[Medium], images: list[ImageLayer]) -> None:
    for i in range(1, len(rows)):
        _check_link(rows[i - 1], images[i - 1], rows[i], parent_facts(images[i], rows[i]))


def _check_link(child_m: Medium, child: ImageLayer, parent_m: Medium,
                facts: ParentFacts) -> None:
    if not is_child(child):
        raise MediaError(f"{child_m.location}: a {child.format_name} image cannot be "
                         f"a differencing image, but the registry makes it a child of "
                         f"{parent_m.location}; remove it and add it without --parent")
    check_link(child_m.location, link_of(child), facts)


def top_image(layer: Layer) -> ImageLayer:
    """The image clients write to at the top of an opened stack."""
    cur: Layer | None = layer
    while cur is not None:
        if isinstance(cur, ImageLayer):
            return cur
        cur = cur.inner
    raise MediaError(f"{layer.describe()}: no image at the top of the stack")


# ---- per-client differencing images (immutable, multiattach) ---------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def diff_path(state_dir: Path, medium: Medium, client: str) -> Path:
    """``STATE/diffs/<medium name>-<uuid prefix>--<client>.vdi``."""
    who = _UNSAFE.sub("_", client) or "client"
    return state_dir / "diffs" / f"{medium.name}-{medium.uuid[:8]}--{who}.vdi"


class ClientChain(ChainLayer):
    """A client's differencing image over the shared base; tells its factory when closed."""

    def __init__(self, image: ImageLayer, base: Layer, closed: Callable[[], None]) -> None:
        super().__init__([image], below=base)
        self._closed: Callable[[], None] | None = closed

    async def _close(self) -> None:
        try:
            await super()._close()
        finally:
            done, self._closed = self._closed, None
            if done is not None:
                done()


class ClientDiffs:
    """The ``diff_factory`` of a ``MediumHub``: ``await diffs(client, reset)``.

    ``wait_closed()`` returns once every client image it opened is closed (the
    hub closes them as their sessions end; the daemon waits before it closes
    the base, so no client's last writes are cut off).
    """

    def __init__(self, medium: Medium, base: Layer, state_dir: Path) -> None:
        self.medium = medium
        self.base = base
        self.state_dir = state_dir
        self.parent = medium_facts(base, medium)
        self.open = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def _closed(self) -> None:
        self.open -= 1
        if not self.open:
            self._idle.set()

    async def wait_closed(self) -> None:
        await self._idle.wait()

    async def __call__(self, client: str, reset: bool) -> Layer:
        path = diff_path(self.state_dir, self.medium, client)
        if reset and path.exists():
            path.unlink()
        if path.exists():
            img = open_image(path, fmt="vdi")
            problem = link_problem(link_of(img), self.parent) if is_child(img) else \
                "it is not a differencing image"
            if problem:
                await img.close()
                raise MediaError(f"{path}: {problem}; delete it to start this client afresh")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            img = create_child(str(path), self.parent, "vdi")
        self.open += 1
        self._idle.clear()
        return ClientChain(img, self.base, self._closed)
