"""Media operations: list, info, search, add, remove, release, refresh, clear.

Each is ``async def op(ctx, **params) -> JSON-able`` (see ``context``): the
control API calls it in the daemon, the CLI calls it directly when no
server runs.  Parameters are plain JSON values; paths arrive absolute (the
CLI resolves them against its own working directory before sending).

Rules kept here, VirtualBox's:

* a UUID is known once: adding an image whose UUID the registry already has
  is refused, pointing at ``clone`` (which makes a copy with a new UUID);
  images that carry no UUID in the file (raw, ISO, Parallels) get one from
  the registry, and are then kept apart by location;
* a medium still attached, or with children, is not removed -- the error
  says where it is attached and which children it has;
* ``release`` detaches a medium from every slot; ``clear-inaccessible``
  forgets DVD and floppy media whose file is gone (never hard disks).

Remote media: ``add`` of an ``iscsi://`` URL logs in to the LUN and registers
it as a hard disk of format ``iscsi`` -- size from READ CAPACITY 16, UUID
derived from its VPD 83h identity (so the same LUN reached by another
address is refused like a copy), the URL stored without secrets
(``inspect.stored_url``).

Bandwidth groups (``bandwidth_*``) live in the registry; with a daemon
running, every change is also applied to its live ``BandwidthGroups``
(``ctx.live.groups``), so a new limit reaches requests not yet started at
once.  A group that media still use is not removed; the error names them.

``modify`` and ``clone`` live in ``modify``; controllers and attachments in
``attach_ops``.
"""

from __future__ import annotations

import os
import sqlite3
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from typing import Any

from blockyard.block.formats import create_image
from blockyard.block.formats.base import ImageInfo
from blockyard.errors import ConfigError, ConflictError, MediaError, NotFoundError
from blockyard.media import files
from blockyard.media.context import Context, locked_medium
from blockyard.media.inspect import (
    REMOTE_FORMAT,
    inspect_file,
    is_remote,
    medium_info,
    quick_accessible,
    recheck,
    remote_info,
    remote_uuid,
    stored_url,
)
from blockyard.media.model import DEFAULT_MODE, KINDS, WRITE_MODES, Medium
from blockyard.media.registry import Registry
from blockyard.util.units import parse_size

JSON = Any


def view(ctx: Context, m: Medium) -> dict[str, JSON]:
    """A medium as the API shows it: its row, where it is attached, whether served."""
    d = m.as_dict()
    d["accessible"], d["last_error"] = quick_accessible(m)
    d["attachments"] = [a.as_dict() for a in ctx.registry.attachments(medium=m.uuid)]
    d["in_use"] = bool(ctx.live and ctx.live.open_layer(m.uuid) is not None)
    return d


def check_choice(value: str | None, allowed: tuple[str, ...], what: str) -> None:
    if value is not None and value not in allowed:
        raise ConfigError(f"unknown {what} {value!r} (one of: {', '.join(allowed)})")


async def media_list(ctx: Context, kind: str | None = None) -> list[dict[str, JSON]]:
    check_choice(kind, KINDS, "medium kind")
    return [view(ctx, m) for m in ctx.registry.media(kind)]


async def media_search(ctx: Context, text: str) -> list[dict[str, JSON]]:
    return [view(ctx, m) for m in ctx.registry.search(text)]


async def media_info(ctx: Context, ref: str) -> dict[str, JSON]:
    m = ctx.registry.resolve(ref)
    d = view(ctx, m)
    parent = ctx.registry.medium(m.parent_uuid) if m.parent_uuid else None
    d["parent_location"] = parent.location if parent else None
    d["children"] = [{"uuid": c.uuid, "location": c.location}
                     for c in ctx.registry.children(m.uuid)]
    d["image"] = None
    if d["accessible"]:
        fresh = await recheck(ctx, m)
        d.update(fresh)
        if fresh["accessible"]:
            d["image"] = (await medium_info(ctx, m)).as_dict()
    return d


# ---- add ----------------------------------------------------------------------------------
async def media_add(ctx: Context, path: str, kind: str | None = None,
                    write_mode: str | None = None, description: str = "",
                    format: str | None = None, parent: str | None = None,
                    create_size: str | int | None = None,
                    variant: str = "dynamic") -> dict[str, JSON]:
    """Register an existing image (or create it first with ``create_size``)."""
    check_choice(kind, KINDS, "medium kind")
    check_choice(write_mode, WRITE_MODES, "write mode")
    if is_remote(path):
        if create_size is not None or parent or kind not in (None, "hdd") or \
                format not in (None, REMOTE_FORMAT):
            raise ConfigError(f"{stored_url(path)}: a remote LUN is registered as it is: a "
                              "hard disk of format iscsi, without --create or --parent")
        return await _add_remote(ctx, path, write_mode, description)
    path = files.absolute(path)
    created = False
    if create_size is not None:
        size = parse_size(create_size)
        layer = create_image(path, size, format or "raw", variant)
        await layer.close()
        created = True
    try:
        fmt, info = await inspect_file(path, format)
        m = _new_medium(ctx, path, fmt, info, kind, write_mode, description, parent)
        ctx.registry.transact(lambda: _insert_new(ctx.registry, m, info))
    except BaseException:
        if created:
            files.delete_files([path])
        raise
    return view(ctx, m)


def _new_medium(ctx: Context, path: str, fmt: str, info: ImageInfo, kind: str | None,
                write_mode: str | None, description: str, parent: str | None) -> Medium:
    kind = kind or ("dvd" if fmt == "iso" else "hdd")
    uid, source = (info.uuid, "image") if info.uuid else (str(uuidlib.uuid4()), "registry")
    return Medium(
        uuid=uid.lower(), kind=kind, format=fmt, location=path,
        parent_uuid=_parent_uuid(ctx, path, info, parent),
        write_mode=write_mode or DEFAULT_MODE[kind], description=description,
        virtual_size=info.virtual_size, allocated_size=info.allocated_size,
        uuid_source=source)


async def _add_remote(ctx: Context, url: str, write_mode: str | None,
                      description: str) -> dict[str, JSON]:
    location = stored_url(url)
    info = await remote_info(url)
    uid, source = remote_uuid(info, location)
    m = Medium(uuid=uid, kind="hdd", format=REMOTE_FORMAT, location=location,
               write_mode=write_mode or DEFAULT_MODE["hdd"],
               description=description or _remote_description(info),
               virtual_size=info.virtual_size, uuid_source=source)
    ctx.registry.transact(lambda: _insert_new(ctx.registry, m, info))
    d = view(ctx, m)
    d["identity"] = info.uuid
    if location.split("?")[0] != url.split("?")[0] or "target_password" in url:
        d["warning"] = ("the CHAP secret was not stored; opening the medium reads it from "
                        "$BLOCKYARD_ISCSI_SECRET unless the URL names secret_file= or "
                        "secret_env=")
    return d


def _remote_description(info: ImageInfo) -> str:
    extra = info.extra
    return " ".join(str(extra.get(k, "")).strip() for k in ("vendor", "product")).strip()


def _parent_uuid(ctx: Context, path: str, info: ImageInfo, parent: str | None) -> str | None:
    """The parent link: given explicitly, from the file's parent UUID, or from its hint."""
    if parent:
        return ctx.registry.resolve(parent).uuid
    if info.parent_uuid:
        found = ctx.registry.medium(info.parent_uuid.lower())
        if found is None:
            raise MediaError(f"{path}: its parent {info.parent_uuid} is not registered; "
                             "add the parent first")
        return found.uuid
    if info.parent_hint:
        hint = os.path.join(os.path.dirname(path), info.parent_hint)
        found = ctx.registry.by_location(files.absolute(hint))
        if found is None:
            raise MediaError(f"{path}: its parent {info.parent_hint} is not registered; "
                             "add the parent first")
        return found.uuid
    return None


def _insert_new(reg: Registry, m: Medium, info: ImageInfo) -> None:
    same_place = reg.by_location(m.location)
    if same_place is not None:
        raise ConflictError(f"{m.location} is already registered (UUID {same_place.uuid})")
    same_uuid = reg.medium(m.uuid)
    if same_uuid is not None:
        raise ConflictError(
            f"{m.location} has UUID {m.uuid}, which the registry already knows as "
            f"{same_uuid.location}; make a copy with a new UUID with "
            "'blockyard medium clone'")
    try:
        reg.insert_medium(m)
    except sqlite3.IntegrityError as exc:
        raise ConflictError(f"{m.location}: cannot register: {exc}") from None


# ---- remove / release ------------------------------------------------------------------
def _refuse_if_used(ctx: Context, m: Medium) -> None:
    atts = ctx.registry.attachments(medium=m.uuid)
    if atts:
        where = ", ".join(f"{a.slot} (export {a.export_name})" for a in atts)
        raise ConflictError(f"{m.name} is attached at {where}; detach or release it first")
    kids = ctx.registry.children(m.uuid)
    if kids:
        names = ", ".join(f"{k.location} ({k.uuid})" for k in kids)
        raise ConflictError(f"{m.name} has children: {names}; remove them first")


async def media_remove(ctx: Context, ref: str, delete: bool = False) -> dict[str, JSON]:
    async with locked_medium(ctx, ref) as m:
        if delete and is_remote(m.location):
            raise ConfigError(f"{m.location} is a remote LUN: there is no file to delete; "
                              "remove it without --delete")
        doomed = [m.location]
        if delete and os.path.exists(m.location):
            doomed = await _files_of(m)

        def remove() -> None:
            now = ctx.registry.medium(m.uuid)
            if now is None:
                raise NotFoundError(f"medium {ref!r} was removed by another command")
            _refuse_if_used(ctx, now)
            ctx.registry.delete_medium(m.uuid)
        ctx.registry.transact(remove)
        problems = files.delete_files(doomed) if delete else []
    return {"removed": m.uuid, "location": m.location, "deleted": delete and not problems,
            "problems": problems}


async def _files_of(m: Medium) -> list[str]:
    from blockyard.block.formats import open_image
    layer = open_image(m.location, read_only=True, fmt=m.format)
    try:
        return files.image_files(layer)
    finally:
        await layer.close()


async def media_release(ctx: Context, ref: str) -> dict[str, JSON]:
    from blockyard.media.attach_ops import detach_locked
    async with locked_medium(ctx, ref) as m:
        slots = [await detach_locked(ctx, a) for a in ctx.registry.attachments(medium=m.uuid)]
    return {"released": m.uuid, "detached": slots}


# ---- refresh / clear-inaccessible --------------------------------------------------------
async def media_refresh(ctx: Context) -> list[dict[str, JSON]]:
    """Re-read every medium's file: accessibility, error, sizes.  Returns the changes."""
    changes = []
    for m in ctx.registry.media():
        fresh = await recheck(ctx, m)
        diff = {k: v for k, v in fresh.items() if getattr(m, k) != v}
        if diff:
            _update(ctx, m.uuid, diff)
            changes.append({"uuid": m.uuid, "location": m.location, **diff})
    return changes


async def media_clear_inaccessible(ctx: Context) -> list[dict[str, JSON]]:
    """Forget DVD and floppy media whose file cannot be opened (detaching them first)."""
    from blockyard.media.attach_ops import detach_locked
    await media_refresh(ctx)
    removed = []
    for m in ctx.registry.media():
        if m.kind == "hdd" or m.accessible:
            continue
        async with locked_medium(ctx, m.uuid) as now:
            if now.accessible:
                continue
            slots = [await detach_locked(ctx, a)
                     for a in ctx.registry.attachments(medium=now.uuid)]
            _delete(ctx, now.uuid)
            removed.append({"uuid": now.uuid, "kind": now.kind, "location": now.location,
                            "detached": slots})
    return removed


def _update(ctx: Context, uuid: str, changes: dict[str, Any]) -> None:
    ctx.registry.transact(lambda: ctx.registry.update_medium(uuid, **changes))


def _delete(ctx: Context, uuid: str) -> None:
    ctx.registry.transact(lambda: ctx.registry.delete_medium(uuid))


# ---- bandwidth groups ------------------------------------------------------------------------
NO_GROUP = "none"  # ``--bandwidth-group none``: take the medium out of its group


def _live_groups(ctx: Context) -> Any:
    """The daemon's ``BandwidthGroups`` (None without a daemon)."""
    return getattr(ctx.live, "groups", None) if ctx.live is not None else None


def _sync_groups(ctx: Context) -> None:
    groups = _live_groups(ctx)
    if groups is not None:
        groups.sync(dict(ctx.registry.bandwidth_groups()))


def _label(m: Medium) -> str:
    return m.location if is_remote(m.location) else m.name


def _group_view(ctx: Context, name: str, limit: int) -> dict[str, JSON]:
    from blockyard.util.limits import format_limit

    d: dict[str, JSON] = {"name": name, "limit": limit, "limit_text": format_limit(limit),
                          "media": [_label(m) for m in ctx.registry.group_users(name)]}
    groups = _live_groups(ctx)
    if groups is not None and name in groups:
        group = groups.get(name)
        d["waiting"] = group.waiting
        # bytes admitted per session key ("nbd:PEER", "iscsi:IQN"): who uses the group
        d["sessions"] = {str(k): v for k, v in group._sched.admitted.items()}
    return d


def _group_rate(name: str, limit: int | str) -> int:
    from blockyard.block.bandwidth import as_rate, check_group_name

    check_group_name(name)
    return as_rate(limit)


async def bandwidth_list(ctx: Context) -> list[dict[str, JSON]]:
    return [_group_view(ctx, n, lim) for n, lim in ctx.registry.bandwidth_groups()]


async def bandwidth_add(ctx: Context, name: str, limit: int | str) -> dict[str, JSON]:
    rate = _group_rate(name, limit)
    if name.lower() == NO_GROUP:
        raise ConfigError(f"{name!r} means no group (medium modify --bandwidth-group none); "
                          "pick another name")

    def add() -> None:
        if name in dict(ctx.registry.bandwidth_groups()):
            raise ConflictError(f"bandwidth group {name!r} already exists")
        ctx.registry.put_bandwidth_group(name, rate)
    ctx.registry.transact(add)
    _sync_groups(ctx)
    return _group_view(ctx, name, rate)


async def bandwidth_set(ctx: Context, name: str, limit: int | str) -> dict[str, JSON]:
    rate = _group_rate(name, limit)

    def put() -> None:
        ctx.registry.bandwidth_group(name)  # NotFoundError
        ctx.registry.put_bandwidth_group(name, rate)
    ctx.registry.transact(put)
    _sync_groups(ctx)
    return _group_view(ctx, name, rate)


async def bandwidth_remove(ctx: Context, name: str) -> dict[str, JSON]:
    def remove() -> None:
        ctx.registry.bandwidth_group(name)
        users = ctx.registry.group_users(name)
        if users:
            raise ConflictError(f"bandwidth group {name!r} is used by: "
                                f"{', '.join(_label(m) for m in users)}")
        ctx.registry.delete_bandwidth_group(name)
    ctx.registry.transact(remove)
    _sync_groups(ctx)
    return {"removed": name}


async def media_bandwidth_group(ctx: Context, ref: str, group: str) -> dict[str, JSON]:
    """Put medium ``ref`` in bandwidth group ``group`` ("none": in no group).

    While the medium is served, the daemon moves its sessions to the new group
    at once (``LiveServer.regroup``, which may refuse).
    """
    name = None if group.lower() == NO_GROUP else group
    async with locked_medium(ctx, ref) as m:
        if name is not None:
            ctx.registry.bandwidth_group(name)  # NotFoundError names it
        regroup = getattr(ctx.live, "regroup", None) if ctx.live is not None else None
        if regroup is not None and name != m.bandwidth_group:
            regroup(m.uuid, name)
        _update(ctx, m.uuid, {"bandwidth_group": name})
        now = ctx.registry.medium(m.uuid)
        assert now is not None
        return view(ctx, now)


BANDWIDTH_OPERATIONS: dict[str, Callable[..., Awaitable[Any]]] = {
    "bandwidth.list": bandwidth_list,
    "bandwidth.add": bandwidth_add,
    "bandwidth.set": bandwidth_set,
    "bandwidth.remove": bandwidth_remove,
    "media.bandwidth_group": media_bandwidth_group,
}
