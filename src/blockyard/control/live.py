"""The daemon's live side of the registry: open media, exports, sessions.

``LiveServer`` implements ``media.context.Live``.  It keeps one open stack
per medium (``OpenMedium``), shared by every attachment of that medium, so
two exports of a shareable medium -- or, later, an NBD export and an iSCSI
LUN -- see the same bytes through one object.

* ``attach`` opens the medium through ``media.builder`` (the only place a
  medium becomes a stack) unless it is open already, adds an ``Export`` to
  the NBD server's table -- new clients can use it at once -- and tells the
  observers;
* ``detach`` removes the export from the table first (no new sessions),
  then drains every connection using it: ``NbdConnection.drain`` stops
  taking requests, waits for those in flight (up to ``grace`` seconds, after
  which they are cancelled and fail with ESHUTDOWN), and closes the socket.
  The last export of a medium gone, its stack is flushed and closed.

Observers (``on_attach`` / ``on_detach``, plain or async callables taking
``(attachment, layer)``) are how the iSCSI target follows
(``control.iscsi_live``): a controller is a target, an attachment a LUN,
served from the same ``OpenMedium`` (layer and hub) as the NBD export.

Opening applies the controller's host-cache policy (``host_cache`` off: raw
media bypass the page cache; remote media never use it) and the medium's
bandwidth group: ``groups`` is the server's one ``BandwidthGroups``, and
every session layer the medium's hub hands out is wrapped in the group
(``GroupBinding``), so NBD and iSCSI sessions share it.  ``regroup`` moves a
served medium's sessions from one group to another at once; putting a
served medium into a group, or taking it out, waits for its next opening
and is refused meanwhile (VirtualBox, too, changes an attachment's group
only while the VM is off; limits change live).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from blockyard.block.bandwidth import BandwidthGroups
from blockyard.block.layer import Layer
from blockyard.block.throttle import ThrottleLayer
from blockyard.block.writemode import MediumHub
from blockyard.errors import BlockError, ConflictError
from blockyard.media import builder
from blockyard.media.chain_open import ClientDiffs
from blockyard.media.inspect import is_remote
from blockyard.media.model import Attachment, Medium
from blockyard.media.registry import Registry
from blockyard.media.remote_chain import open_base
from blockyard.transport.nbd_server import Export, NbdServer

log = logging.getLogger("blockyard.daemon")
Observer = Callable[[Attachment, Layer], Any]


class GroupBinding:
    """One open medium's bandwidth group and the throttle layers charged to it."""

    def __init__(self, groups: BandwidthGroups, name: str | None) -> None:
        if name is not None:
            groups.get(name)  # NotFoundError before anything is opened
        self.groups = groups
        self.name = name
        self.layers: weakref.WeakSet[ThrottleLayer] = weakref.WeakSet()

    def wrap(self, layer: Layer, owns_inner: bool) -> Layer:
        if self.name is None:
            return layer
        wrapped = self.groups.wrap(layer, self.name, None, owns_inner=owns_inner)
        assert isinstance(wrapped, ThrottleLayer)
        self.layers.add(wrapped)
        return wrapped

    def rebind(self, label: str, name: str | None) -> None:
        if name == self.name:
            return
        if name is None or self.name is None:
            raise ConflictError(f"{label} is being served: it can move between bandwidth "
                                "groups now, but enters or leaves one only when it is next "
                                "opened; detach it first")
        group = self.groups.get(name)
        for layer in list(self.layers):
            layer.group = group
        self.name = name


@dataclass
class OpenMedium:
    layer: Layer
    hub: MediumHub | None = None  # write-mode policy shared by every session
    exports: set[str] = field(default_factory=set)
    bandwidth: GroupBinding | None = None
    diffs: ClientDiffs | None = None  # per-client images (immutable, multiattach)
    remote: Layer | None = None  # a remote LUN the stack borrows (closed after it)


class LiveServer:
    def __init__(self, registry: Registry, nbd: NbdServer, *, read_only: bool = False,
                 grace: float = 10.0, groups: BandwidthGroups | None = None) -> None:
        self.registry = registry
        self.nbd = nbd
        self.read_only = read_only
        self.grace = grace
        self.groups = groups if groups is not None else BandwidthGroups()
        self.open: dict[str, OpenMedium] = {}
        self.on_attach: list[Observer] = []
        self.on_detach: list[Observer] = []

    def _lookup(self, uuid: str) -> Medium:
        m = self.registry.medium(uuid)
        if m is None:
            raise ConflictError(f"medium {uuid} vanished from the registry")
        return m

    def open_layer(self, uuid: str) -> Layer | None:
        om = self.open.get(uuid)
        return om.layer if om else None

    async def attach(self, att: Attachment, medium: Medium) -> None:
        if self.nbd.exports.lookup(att.export_name) is not None and att.export_name:
            raise ConflictError(f"the server already has an export named {att.export_name!r}")
        om = self.open.get(medium.uuid)
        if om is None:
            om = self.open[medium.uuid] = await self._open(att, medium)
        om.exports.add(att.export_name)
        read_only = om.hub.mode == "readonly" if om.hub else om.layer.read_only
        self.nbd.exports.add(Export(att.export_name, om.layer, medium.description,
                                    read_only, hub=om.hub))
        log.info("attached %s at %s as export %s", medium.location, att.slot, att.export_name)
        await _notify(self.on_attach, att, om.layer)

    async def _open(self, att: Attachment, medium: Medium) -> OpenMedium:
        """The medium's shared stack under its controller's host cache and its group."""
        binding = GroupBinding(self.groups, medium.bandwidth_group)
        remote = is_remote(medium.location)
        lun: Layer | None
        if remote:
            lun = await builder.open_remote_medium(medium, read_only=self.read_only)
        else:  # a chain may end at a remote LUN: its parents are only read
            lun = await open_base(medium, self._lookup)
        try:
            served = builder.serve(
                medium, self._lookup, state_dir=self.registry.state_dir,
                children=self.registry.children, read_only=self.read_only,
                host_cache=lun is not None or self.registry.controller(att.controller).host_cache,
                opened=lun if remote else None, base=None if remote else lun,
                bandwidth=binding.wrap)
        except BaseException:
            if lun is not None:
                await lun.close()
            raise
        return OpenMedium(served.layer, served.hub, bandwidth=binding, diffs=served.diffs,
                          remote=lun)

    def regroup(self, uuid: str, name: str | None) -> None:
        """Medium ``uuid`` is now in bandwidth group ``name`` (see the module docstring)."""
        om = self.open.get(uuid)
        if om is not None and om.bandwidth is not None:
            om.bandwidth.rebind(self._lookup(uuid).name, name)

    async def detach(self, att: Attachment) -> int:
        export = self.nbd.exports.remove(att.export_name)
        om = self.open.get(att.medium_uuid)
        users = [c for c in list(self.nbd.connections) if export is not None
                 and c.export is export]
        await asyncio.gather(*(c.drain(self.grace) for c in users))
        if om is not None:
            om.exports.discard(att.export_name)
            await _notify(self.on_detach, att, om.layer)
            if not om.exports:
                del self.open[att.medium_uuid]
                await _close_medium(om)
        log.info("detached %s (export %s, %d sessions ended)", att.slot, att.export_name,
                 len(users))
        return len(users)

    def host_cache_of(self, uuid: str) -> bool:
        """The host-cache policy of the controller medium ``uuid`` is attached to."""
        atts = self.registry.attachments(medium=uuid)
        return self.registry.controller(atts[0].controller).host_cache if atts else True

    def rekey(self, old_uuid: str, new_uuid: str) -> None:
        """The open medium ``old_uuid`` now serves medium ``new_uuid`` (a snapshot
        moved the writable top of its chain); its layer and sessions stay."""
        om = self.open.pop(old_uuid, None)
        if om is not None:
            self.open[new_uuid] = om

    async def close_all(self) -> None:
        for uuid in list(self.open):
            await _close_medium(self.open.pop(uuid))

    # ---- views for the control API ---------------------------------------------------------
    def sessions(self) -> list[dict[str, Any]]:
        out = []
        for c in list(self.nbd.connections):
            e = c.export
            out.append({"protocol": "nbd", "peer": c.peer, "export": e.name if e else None,
                        "in_flight": len(c.inflight), "draining": c.draining,
                        "export_requests": e.stats["requests"] if e else 0,
                        "export_bytes": e.stats["bytes"] if e else 0})
        return out

    def exports(self) -> list[dict[str, Any]]:
        users: dict[str, list[str]] = {}
        for c in list(self.nbd.connections):
            if c.export is not None:
                users.setdefault(c.export.name, []).append(c.peer)
        return [{"name": e.name, "size": e.layer.size, "read_only": e.read_only,
                 "description": e.description, "requests": e.stats["requests"],
                 "bytes": e.stats["bytes"], "peers": users.get(e.name, []),
                 "stack": e.layer.describe()} for e in self.nbd.exports]


async def _notify(observers: list[Observer], att: Attachment, layer: Layer) -> None:
    for fn in list(observers):
        try:
            result = fn(att, layer)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("attachment observer %r failed", fn)


async def _close_medium(om: OpenMedium) -> None:
    """Per-client differencing images first (their sessions' release tasks may not have
    run yet, and must not be cut off at shutdown), then the shared stack."""
    if om.hub is not None:
        for client in om.hub.holders:
            while client in om.hub.holders:
                await om.hub.release(client)
    if om.diffs is not None:
        await om.diffs.wait_closed()  # a session's own release may still be closing it
    await _close(om.layer)
    if om.remote is not None:
        await om.remote.close()  # a chain's borrowed LUN (closing twice is harmless)


async def _close(layer: Layer) -> None:
    try:
        await layer.flush()
    except BlockError as exc:
        log.error("flushing %s failed: %s", layer.describe(), exc)
    await layer.close()
