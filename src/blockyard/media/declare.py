"""Bringing the registry in line with a configuration's declarations, at start.

Controllers and attachments declared in the config exist whenever the
daemon starts: a declared controller missing from the registry is added; a
declared medium missing on disk is created when ``create_size`` says so,
and registered when unknown; a declared attachment is booked when its slot
is free.  Declarations that the registry contradicts (a controller of
another type, a slot holding another medium) stop the start with an error
naming both, rather than silently rearranging what a user set up at run
time.  Everything runs before any listener opens, through the ordinary
operations, so the same checks apply as on the command line.

The first default configuration's ``[[export]]`` tables are served as
attachments of an implicit controller ``exports`` (virtio-scsi), in order.
"""

from __future__ import annotations

import os
from pathlib import Path

from blockyard.config import AttachmentDecl, Config, ControllerDecl
from blockyard.errors import ConfigError, NotFoundError
from blockyard.media import attach_ops, ops
from blockyard.media.context import Context
from blockyard.media.files import absolute

LEGACY_CONTROLLER = ControllerDecl("exports", "virtio-scsi")


def declared(cfg: Config) -> tuple[list[ControllerDecl], list[AttachmentDecl]]:
    """The config's controllers and attachments, with legacy exports folded in."""
    controllers, attachments = list(cfg.controllers), list(cfg.attachments)
    if cfg.exports:
        controllers.append(LEGACY_CONTROLLER)
        for i, e in enumerate(cfg.exports):
            attachments.append(AttachmentDecl(
                LEGACY_CONTROLLER.name, i, e.path, e.name, e.format, e.create_size,
                e.description, write_mode="readonly" if e.read_only else None))
    return controllers, attachments


async def apply(ctx: Context, cfg: Config) -> None:
    controllers, attachments = declared(cfg)
    for c in controllers:
        await _controller(ctx, c)
    for a in attachments:
        await _attachment(ctx, a)


async def _controller(ctx: Context, c: ControllerDecl) -> None:
    try:
        have = ctx.registry.controller(c.name)
    except NotFoundError:
        await attach_ops.controller_add(ctx, c.name, c.type, c.host_cache)
        return
    if have.type != c.type:
        raise ConfigError(f"{c.name!r} is a {have.type} controller in the registry, the config "
                          f"says {c.type}; remove it or fix the config")


def medium_path(state_dir: Path, medium: str) -> str:
    p = Path(medium).expanduser()
    return absolute(str(p if p.is_absolute() else state_dir / p))


async def _attachment(ctx: Context, a: AttachmentDecl) -> None:
    path = medium_path(ctx.state_dir, a.medium)
    m = ctx.registry.by_location(path)
    if m is None:
        create = a.create_size if a.create_size and not os.path.exists(path) else None
        if create:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        added = await ops.media_add(ctx, path, kind=a.kind, write_mode=a.write_mode,
                                    description=a.description, format=a.format,
                                    create_size=create, variant=a.variant)
        uuid = added["uuid"]
    else:
        uuid = m.uuid
    held = ctx.registry.attachment(a.controller, a.port)
    if held is not None:
        if held.medium_uuid != uuid:
            raise ConfigError(f"the config attaches {path} at {a.controller}:{a.port}, but the "
                              f"registry has medium {held.medium_uuid} there; detach it or "
                              "fix the config")
        return
    await attach_ops.attach(ctx, a.controller, uuid, port=a.port, name=a.name or None)
