"""Controllers and attachments: add/list/remove a controller, attach, detach.

A controller has ``CONTROLLER_SLOTS[type]`` ports (VirtualBox's counts); an
attachment puts a medium in one port and is served as the NBD export
``CONTROLLER-PORT`` unless named otherwise.  The database's primary key
(controller, port) and unique export name make a double booking impossible
even if two processes race; the checks below run inside the same
``BEGIN IMMEDIATE`` transaction, so the user gets the friendly message
(which medium holds the port, how full the controller is) instead of a
constraint error.

Order with a running daemon: *attach* writes the row, then asks the daemon
to open and publish the export; if that fails the row is deleted again.
*detach* first withdraws the export and drains its sessions (requests in
flight finish, then those connections close), then deletes the row.  So
the registry never names an export that the server cannot serve, except
for the instant in between.

Observers: the daemon's ``LiveServer.on_attach`` / ``on_detach`` lists are
called after each live change with the ``Attachment`` and its layer; the
iSCSI target will subscribe there to map controllers to targets and
attachments to LUNs.
"""

from __future__ import annotations

from typing import Any

from blockyard.errors import ConfigError, ConflictError, MediaError, NotFoundError
from blockyard.media.context import Context, locked_medium
from blockyard.media.inspect import quick_accessible
from blockyard.media.model import (
    CONTROLLER_SLOTS,
    MULTI_ATTACH_MODES,
    WRITE_MODES,
    Attachment,
    Controller,
    Medium,
    default_export_name,
)
from blockyard.media.ops import check_choice, view

TYPES = tuple(CONTROLLER_SLOTS)


# ---- controllers ----------------------------------------------------------------------------
async def controller_add(ctx: Context, name: str, type: str,
                         host_cache: bool = True) -> dict[str, Any]:
    check_choice(type, TYPES, "controller type")
    if not name or "/" in name or name != name.strip():
        raise ConfigError(f"bad controller name {name!r}")
    c = Controller(name, type, CONTROLLER_SLOTS[type], bool(host_cache))

    def add() -> None:
        if any(x.name == name for x in ctx.registry.controllers()):
            raise ConflictError(f"controller {name!r} exists already")
        ctx.registry.insert_controller(c)
    ctx.registry.transact(add)
    return _controller_view(ctx, c)


def _controller_view(ctx: Context, c: Controller) -> dict[str, Any]:
    d = c.as_dict()
    atts = ctx.registry.attachments(controller=c.name)
    d["used"] = len(atts)
    d["attachments"] = [a.as_dict() for a in atts]
    return d


async def controller_list(ctx: Context) -> list[dict[str, Any]]:
    return [_controller_view(ctx, c) for c in ctx.registry.controllers()]


async def controller_remove(ctx: Context, name: str) -> dict[str, Any]:
    def remove() -> None:
        ctx.registry.controller(name)
        atts = ctx.registry.attachments(controller=name)
        if atts:
            where = ", ".join(f"port {a.port} (export {a.export_name})" for a in atts)
            raise ConflictError(f"controller {name!r} still has attachments: {where}; "
                                "detach them first")
        ctx.registry.delete_controller(name)
    ctx.registry.transact(remove)
    return {"removed": name}


# ---- attachments ------------------------------------------------------------------------------
async def attachment_list(ctx: Context) -> list[dict[str, Any]]:
    out = []
    for a in ctx.registry.attachments():
        d = a.as_dict()
        m = ctx.registry.medium(a.medium_uuid)
        d["medium"] = m.location if m else None
        d["served"] = bool(ctx.live and ctx.live.open_layer(a.medium_uuid) is not None)
        out.append(d)
    return out


async def attach(ctx: Context, controller: str, medium: str, port: int | None = None,
                 mtype: str | None = None, name: str | None = None) -> dict[str, Any]:
    check_choice(mtype, WRITE_MODES, "write mode")
    async with locked_medium(ctx, medium) as m:
        ok, err = quick_accessible(m)
        if not ok:
            raise MediaError(f"cannot attach {m.name}: {err}")
        att = ctx.registry.transact(lambda: _book(ctx, controller, port, m, mtype, name))
        if ctx.live is not None:
            fresh = ctx.registry.medium(m.uuid)
            assert fresh is not None
            try:
                await ctx.live.attach(att, fresh)
            except BaseException:
                ctx.registry.transact(lambda: ctx.registry.delete_attachment(
                    att.controller, att.port))
                if mtype and mtype != m.write_mode:
                    ctx.registry.transact(lambda: ctx.registry.update_medium(
                        m.uuid, write_mode=m.write_mode))
                raise
        now = ctx.registry.medium(m.uuid)
        assert now is not None
        return {"attachment": att.as_dict(), "medium": view(ctx, now)}


def _book(ctx: Context, controller: str, port: int | None, m: Medium, mtype: str | None,
          name: str | None) -> Attachment:
    """Check and insert one attachment (inside the transaction)."""
    c = ctx.registry.controller(controller)
    taken = {a.port: a for a in ctx.registry.attachments(controller=c.name)}
    port = _pick_port(c, port, taken)
    elsewhere = ctx.registry.attachments(medium=m.uuid)
    mode = mtype or m.write_mode
    if elsewhere and (mode not in MULTI_ATTACH_MODES or mode != m.write_mode):
        where = ", ".join(a.slot for a in elsewhere)
        raise ConflictError(f"{m.name} ({m.write_mode}) is attached at {where} already; a "
                            f"medium can sit in several slots only when it is "
                            f"{', '.join(MULTI_ATTACH_MODES)}")
    export = name or default_export_name(c.name, port)
    holder = ctx.registry.by_export(export)
    if holder is not None:
        raise ConflictError(f"export name {export!r} is used by {holder.slot}; pick another "
                            "with --name")
    if mode != m.write_mode:
        ctx.registry.update_medium(m.uuid, write_mode=mode)
    att = Attachment(c.name, port, m.uuid, export)
    ctx.registry.insert_attachment(att)
    return att


def _pick_port(c: Controller, port: int | None, taken: dict[int, Attachment]) -> int:
    if port is None:
        free = [p for p in range(c.slots) if p not in taken]
        if not free:
            raise ConflictError(f"controller {c.name!r} ({c.type}) is full: all {c.slots} "
                                "ports are used")
        return free[0]
    if not 0 <= port < c.slots:
        raise ConfigError(f"controller {c.name!r} ({c.type}) has ports 0-{c.slots - 1}, "
                          f"not {port}")
    if port in taken:
        a = taken[port]
        raise ConflictError(f"port {port} of controller {c.name!r} is taken by medium "
                            f"{a.medium_uuid} (export {a.export_name})")
    return port


async def detach(ctx: Context, controller: str, port: int) -> dict[str, Any]:
    ctx.registry.controller(controller)
    att = ctx.registry.attachment(controller, port)
    if att is None:
        raise NotFoundError(f"nothing is attached at {controller}:{port}")
    async with locked_medium(ctx, att.medium_uuid):
        now = ctx.registry.attachment(controller, port)
        if now is None or now.medium_uuid != att.medium_uuid:
            raise ConflictError(f"{controller}:{port} changed while waiting; look again")
        return await detach_locked(ctx, now)


async def detach_locked(ctx: Context, att: Attachment) -> dict[str, Any]:
    """Detach with the medium's lock held: drain the export, then delete the row."""
    closed = 0
    if ctx.live is not None:
        closed = await ctx.live.detach(att)
    ctx.registry.transact(lambda: ctx.registry.delete_attachment(att.controller, att.port))
    return {**att.as_dict(), "sessions_closed": closed}
