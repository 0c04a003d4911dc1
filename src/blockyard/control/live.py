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
``(attachment, layer)``) are how the iSCSI target will follow: a
controller is a target, an attachment a LUN.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from blockyard.block.layer import Layer
from blockyard.block.writemode import MediumHub
from blockyard.errors import BlockError, ConflictError
from blockyard.media import builder
from blockyard.media.model import Attachment, Medium
from blockyard.media.registry import Registry
from blockyard.transport.nbd_server import Export, NbdServer

log = logging.getLogger("blockyard.daemon")
Observer = Callable[[Attachment, Layer], Any]


@dataclass
class OpenMedium:
    layer: Layer
    hub: MediumHub | None = None  # write-mode policy shared by every session
    exports: set[str] = field(default_factory=set)


class LiveServer:
    def __init__(self, registry: Registry, nbd: NbdServer, *, read_only: bool = False,
                 grace: float = 10.0) -> None:
        self.registry = registry
        self.nbd = nbd
        self.read_only = read_only
        self.grace = grace
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
            served = builder.serve(medium, self._lookup, state_dir=self.registry.state_dir,
                                   children=self.registry.children, read_only=self.read_only)
            om = self.open[medium.uuid] = OpenMedium(served.layer, served.hub)
        om.exports.add(att.export_name)
        read_only = om.hub.mode == "readonly" if om.hub else om.layer.read_only
        self.nbd.exports.add(Export(att.export_name, om.layer, medium.description,
                                    read_only, hub=om.hub))
        log.info("attached %s at %s as export %s", medium.location, att.slot, att.export_name)
        await _notify(self.on_attach, att, om.layer)

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
                await _close(om.layer)
        log.info("detached %s (export %s, %d sessions ended)", att.slot, att.export_name,
                 len(users))
        return len(users)

    def rekey(self, old_uuid: str, new_uuid: str) -> None:
        """The open medium ``old_uuid`` now serves medium ``new_uuid`` (a snapshot
        moved the writable top of its chain); its layer and sessions stay."""
        om = self.open.pop(old_uuid, None)
        if om is not None:
            self.open[new_uuid] = om

    async def close_all(self) -> None:
        for uuid in list(self.open):
            await _close(self.open.pop(uuid).layer)

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


async def _close(layer: Layer) -> None:
    try:
        await layer.flush()
    except BlockError as exc:
        log.error("flushing %s failed: %s", layer.describe(), exc)
    await layer.close()
