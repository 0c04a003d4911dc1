"""The daemon's iSCSI target service: controllers are targets, attachments are LUNs.

``IscsiLive`` follows the ``LiveServer`` (``on_attach`` / ``on_detach``):

* every controller is one target, ``iqn.2026-11.org.blockyard:<controller>``
  unless its ``[[target]]`` table names it, with that table's ACL (initiator
  IQNs; none: everyone), one-way CHAP (``chap_user`` + secret) and mutual
  CHAP (``mutual_user`` + secret).  Targets of the registry's controllers
  exist from the start; one added at run time appears with its first
  attachment.  Every listen address (``[iscsi] listen``) serves them all;
* an attachment is the LUN numbered by its port, added to the running
  target (the other LUNs' initiators get REPORTED LUNS DATA HAS CHANGED) and
  removed on detach after its requests in flight finished;
* the LUN serves the medium's ``OpenMedium`` -- the same stack and
  ``MediumHub`` as its NBD export -- through a ``SessionView`` (one layer per
  initiator from the hub, bandwidth group included), so NBD and iSCSI
  clients see the same bytes under the same write-mode rules;
* identity: ``DiskOptions(uuid=...)`` from the medium's UUID, so the unit
  serial number (VPD 80h) and the designators (VPD 83h) stay the same across
  restarts, controllers and ports; vendor/product are fixed;
* the caching mode page's WCE starts from the medium's write-cache switch
  (``block.hostcache.write_cache_control``): with the controller's host
  cache off, MODE SELECT WCE=0 turns our write-back cache off.

Per-initiator CHAP secrets (one secret per initiator name on one target)
need the login core to choose credentials by initiator; it takes one pair
per target, so that is what a ``[[target]]`` gives.
"""

from __future__ import annotations

import asyncio
import logging
import uuid as uuidlib
from pathlib import Path
from typing import Any, cast

from blockyard.block.hostcache import write_cache_control
from blockyard.config import Config, TargetDecl
from blockyard.control.iscsi_session_view import SessionView
from blockyard.control.live import LiveServer, OpenMedium
from blockyard.errors import ConfigError
from blockyard.media.model import Attachment, Medium
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskOptions, DiskUnit
from blockyard.scsi.task import Nexus
from blockyard.transport.iscsi_target import IscsiTarget, IscsiTargetServer, target_name

log = logging.getLogger("blockyard.iscsi")
UUID_NAMESPACE = uuidlib.UUID("6c1b0b2e-6c55-4a1e-9d4e-3f0c2b8a9e10")  # non-UUID medium ids


class LiveTargetDevice(ScsiTargetDevice):
    """A target device whose LUNs release an initiator's hub session with its last nexus."""

    def nexus_gone(self, nexus: Nexus) -> None:
        super().nexus_gone(nexus)
        name = nexus.initiator_name
        if any(n.initiator_name == name for u in self.luns.values() for n in u.ua.nexuses):
            return
        loop = asyncio.get_running_loop()
        for unit in self.luns.values():
            view = getattr(unit, "layer", None)
            if isinstance(view, SessionView) and name in view.clients:
                loop.create_task(view.release(name))


def _secret(decl: TargetDecl, who: str) -> tuple[str, str] | None:
    user = getattr(decl, f"{who}_user")
    if not user:
        return None
    secret, path = getattr(decl, f"{who}_secret"), getattr(decl, f"{who}_secret_file")
    if path:
        try:
            secret = Path(path).expanduser().read_text().strip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the {who} CHAP secret: "
                              f"{exc.strerror}") from None
    if not secret:
        raise ConfigError(f"target of controller {decl.controller!r}: empty {who} secret")
    return user, secret


def make_target(controller: str, decl: TargetDecl | None) -> IscsiTarget:
    decl = decl or TargetDecl(controller)
    return IscsiTarget(decl.iqn or target_name(controller), LiveTargetDevice(),
                       acl=list(decl.acl) or None, chap=_secret(decl, "chap"),
                       mutual_chap=_secret(decl, "mutual"), alias=decl.alias)


def disk_options(medium: Medium, om: OpenMedium, view: SessionView) -> DiskOptions:
    try:
        ident = uuidlib.UUID(medium.uuid)
    except ValueError:
        ident = uuidlib.uuid5(UUID_NAMESPACE, medium.uuid)
    wce, setter = write_cache_control(om.layer)
    return DiskOptions(read_only=view.read_only, write_cache=wce, on_write_cache_change=setter,
                       uuid=ident)


class IscsiLive:
    def __init__(self, live: LiveServer, cfg: Config, grace: float = 10.0) -> None:
        self.live = live
        self.grace = grace
        self.decls = {t.controller: t for t in cfg.targets}
        self.targets: dict[str, IscsiTarget] = {}  # by controller
        self.servers: list[IscsiTargetServer] = []
        for c in live.registry.controllers():
            self.target_for(c.name)
        live.on_attach.append(self.attached)
        live.on_detach.append(self.detached)

    def target_for(self, controller: str) -> IscsiTarget:
        target = self.targets.get(controller)
        if target is not None:
            return target
        target = make_target(controller, self.decls.get(controller))
        taken = [c for c, t in self.targets.items() if t.name == target.name]
        if taken:
            raise ConfigError(f"controllers {taken[0]!r} and {controller!r} would both be "
                              f"iSCSI target {target.name}; name one in a [[target]] table")
        self.targets[controller] = target
        for server in self.servers:  # a target added while running
            server.targets[target.name] = target
            cast(dict[str, Any], server.portal.targets)[target.name] = target.policy()
        return target

    async def start(self, host: str, port: int) -> IscsiTargetServer:
        server = IscsiTargetServer(list(self.targets.values()))
        try:
            await server.start(host, port)
        except OSError as exc:
            raise ConfigError(f"cannot listen for iSCSI on {host}:{port}: "
                              f"{exc.strerror or exc}") from None
        self.servers.append(server)
        return server

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop(grace=min(self.grace, 5.0))
        for target in self.targets.values():
            for unit in list(target.device.luns.values()):
                view = getattr(unit, "layer", None)
                if isinstance(view, SessionView):
                    await view.release_all()

    # ---- observers --------------------------------------------------------------------------
    def attached(self, att: Attachment, layer: object) -> None:
        om = self.live.open.get(att.medium_uuid)
        medium = self.live.registry.medium(att.medium_uuid)
        if om is None or om.hub is None or medium is None:
            return
        device = self.target_for(att.controller).device
        view = SessionView(om.hub, f"{medium.name} ({att.slot})")
        device.add_lun(att.port, DiskUnit(view, disk_options(medium, om, view)))
        log.info("iscsi: %s LUN %d serves %s", self.targets[att.controller].name, att.port,
                 medium.location)

    async def detached(self, att: Attachment, layer: object) -> None:
        target = self.targets.get(att.controller)
        if target is None or att.port not in target.device.luns:
            return
        unit = target.device.remove_lun(att.port)
        view = getattr(unit, "layer", None)
        if isinstance(view, SessionView):
            await view.drain(self.grace)
            await view.release_all()
        log.info("iscsi: %s LUN %d removed", target.name, att.port)

    # ---- views ------------------------------------------------------------------------------
    def sessions(self) -> list[dict[str, Any]]:
        out = []
        for server in self.servers:
            for conn in list(server.connections):
                session = conn.core.session if conn.core is not None else None
                if session is None:
                    continue
                out.append({"protocol": "iscsi", "peer": conn.peer, "export": None,
                            "initiator": session.initiator_name,
                            "target": session.target_name or "discovery",
                            "in_flight": len(conn.tasks)})
        return out

    def describe(self) -> list[dict[str, Any]]:
        return [{"controller": c, "iqn": t.name, "luns": sorted(t.device.luns),
                 "acl": None if t.acl is None else list(t.acl), "chap": t.chap is not None}
                for c, t in self.targets.items()]
