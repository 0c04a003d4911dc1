"""Changing a medium and copying one: ``modify`` and ``clone``.

``media_modify`` applies, in this order and under the medium's lock: the
registry fields (write mode, autoreset, description), then file work
(resize, compact, move).  File work is refused while the daemon serves the
medium (detach it first) -- a resize or a compaction under a client's feet,
or a move of a file that sessions hold open, would surprise both -- and the
registry is updated only after the file work succeeded, so a failure leaves
the row describing the file as it is.  A move changes the location, which
is the only place a path is stored: attachments and children refer to the
medium by UUID, so every reference follows.

``media_clone`` copies the visible disk (``clone.copy_visible``) into a new
image of any creatable format, which gets a new UUID and is registered.  A
failed copy or registration deletes the half-made file.
"""

from __future__ import annotations

import os
import uuid as uuidlib
from typing import Any

from blockyard.block.formats import DRIVERS, create_image, open_image, probe
from blockyard.block.layer import Layer
from blockyard.errors import ConflictError, MediaError, NotFoundError
from blockyard.media import files
from blockyard.media.clone import copy_visible
from blockyard.media.context import Context, locked_medium
from blockyard.media.inspect import inspect_file, is_remote
from blockyard.media.model import DEFAULT_MODE, KINDS, WRITE_MODES, Medium
from blockyard.media.ops import _insert_new, check_choice, view
from blockyard.media.remote_chain import open_path, registered_chain
from blockyard.util.aio import run_blocking
from blockyard.util.units import parse_size

CREATABLE = tuple(f for f in DRIVERS if f != "iso")


async def media_modify(ctx: Context, ref: str, write_mode: str | None = None,
                       autoreset: bool | None = None, description: str | None = None,
                       resize: str | int | None = None, compact: bool = False,
                       move: str | None = None) -> dict[str, Any]:
    check_choice(write_mode, WRITE_MODES, "write mode")
    async with locked_medium(ctx, ref) as m:
        fields: dict[str, Any] = {}
        if write_mode is not None and write_mode != m.write_mode:
            _check_mode_change(ctx, m, write_mode)
            fields["write_mode"] = write_mode
        if autoreset is not None:
            fields["autoreset"] = bool(autoreset)
        if description is not None:
            fields["description"] = description
        if resize is not None or compact or move:
            fields.update(await _file_work(ctx, m, resize, compact, move))
        if fields:
            ctx.registry.transact(lambda: ctx.registry.update_medium(m.uuid, **fields))
        now = ctx.registry.medium(m.uuid)
        assert now is not None
        return view(ctx, now)


def _check_mode_change(ctx: Context, m: Medium, mode: str) -> None:
    atts = ctx.registry.attachments(medium=m.uuid)
    if atts:
        where = ", ".join(a.slot for a in atts)
        raise ConflictError(f"{m.name} is attached at {where}; its write mode cannot change "
                            "while attached (detach it first)")


def _refuse_if_served(ctx: Context, m: Medium, what: str) -> None:
    if ctx.live is not None and ctx.live.open_layer(m.uuid) is not None:
        slots = ", ".join(a.slot for a in ctx.registry.attachments(medium=m.uuid))
        raise ConflictError(f"{m.name} is being served (attached at {slots}); "
                            f"detach it before {what}")
    if not os.path.exists(m.location):
        raise MediaError(f"{m.location}: no such file (the medium is inaccessible)")


async def _file_work(ctx: Context, m: Medium, resize: str | int | None, compact: bool,
                     move: str | None) -> dict[str, Any]:
    _refuse_if_served(ctx, m, "resizing, compacting or moving it")
    fields: dict[str, Any] = {}
    if resize is not None or compact:
        layer = open_image(m.location, fmt=m.format)
        try:
            if resize is not None:
                await layer.resize(parse_size(resize))
            if compact:
                await layer.compact()
            await layer.flush()
        finally:
            await layer.close()
        layer = open_image(m.location, read_only=True, fmt=m.format)
        info = layer.info()
        await layer.close()
        fields.update(virtual_size=info.virtual_size, allocated_size=info.allocated_size)
    if move:
        fields["location"] = await _move(ctx, m, move)
    return fields


async def _move(ctx: Context, m: Medium, target: str) -> str:
    target = files.absolute(target)
    if os.path.isdir(target):
        target = os.path.join(target, m.name)
    if target == m.location:
        return target
    other = ctx.registry.by_location(target)
    if other is not None:
        raise ConflictError(f"{target} is already registered (UUID {other.uuid})")
    layer = open_image(m.location, read_only=True, fmt=m.format)
    try:
        plan = files.move_plan(files.image_files(layer), target)
    finally:
        await layer.close()
    await run_blocking(files.move_files, plan)
    return target


# ---- clone -----------------------------------------------------------------------------------
async def media_clone(ctx: Context, src: str, dst: str, format: str | None = None,
                      variant: str = "dynamic", kind: str | None = None,
                      write_mode: str | None = None, description: str | None = None,
                      register: bool = True) -> dict[str, Any]:
    check_choice(kind, KINDS, "medium kind")
    check_choice(write_mode, WRITE_MODES, "write mode")
    dst = files.absolute(dst)
    if os.path.lexists(dst):
        raise MediaError(f"{dst}: already exists")
    try:
        source = ctx.registry.resolve(src)
    except NotFoundError:
        if not (src.startswith("iscsi://") or (os.path.isabs(src) and os.path.exists(src))):
            raise
        return await _clone_file(ctx, src, dst, format, variant, kind, write_mode,
                                 description, register)
    async with locked_medium(ctx, source.uuid) as m:
        if not is_remote(m.location) and not os.path.exists(m.location):
            raise MediaError(f"{m.location}: no such file (the medium is inaccessible)")
        fmt = format or (m.format if m.format in CREATABLE else "raw")
        live = ctx.live.open_layer(m.uuid) if ctx.live else None
        if live is not None:
            new = await _copy_into(live, dst, fmt, variant)
        else:  # the registered chain, down to a remote LUN if it ends at one
            async with registered_chain(m, ctx.lookup) as layer:
                new = await _copy_into(layer, dst, fmt, variant)
        desc = m.description if description is None else description
        return await _register_copy(ctx, new, dst, kind or m.kind,
                                    write_mode or m.write_mode, desc, register)


async def _clone_file(ctx: Context, src: str, dst: str, fmt: str | None, variant: str,
                      kind: str | None, write_mode: str | None, description: str | None,
                      register: bool) -> dict[str, Any]:
    # a remote LUN given by URL is copied as raw data; a file with its chain (flattened)
    src_fmt = "raw" if is_remote(src) else probe(src)
    layer = await open_path(src, read_only=True, fmt=None if is_remote(src) else src_fmt)
    try:
        new = await _copy_into(layer, dst, fmt or (src_fmt if src_fmt in CREATABLE else "raw"),
                               variant)
    finally:
        await layer.close()
    return await _register_copy(ctx, new, dst, kind or ("dvd" if src_fmt == "iso" else "hdd"),
                                write_mode, description or "", register)


async def _copy_into(src: Layer, dst: str, fmt: str, variant: str) -> str:
    if fmt not in CREATABLE:
        raise MediaError(f"cannot create {fmt!r} images (one of: {', '.join(CREATABLE)})")
    target = create_image(dst, src.size, fmt, variant)
    try:
        await copy_visible(src, target)
    except BaseException:
        await target.close()
        files.delete_files([dst])
        raise
    await target.close()
    return fmt


async def _register_copy(ctx: Context, fmt: str, dst: str, kind: str, write_mode: str | None,
                         description: str, register: bool) -> dict[str, Any]:
    _, info = await inspect_file(dst, fmt)
    uid, source = (info.uuid, "image") if info.uuid else (str(uuidlib.uuid4()), "registry")
    m = Medium(uuid=uid.lower(), kind=kind, format=fmt, location=dst,
               write_mode=write_mode or DEFAULT_MODE[kind], description=description,
               virtual_size=info.virtual_size, allocated_size=info.allocated_size,
               uuid_source=source)
    if not register:
        return {"location": dst, "format": fmt, "uuid": m.uuid, "registered": False}
    try:
        ctx.registry.transact(lambda: _insert_new(ctx.registry, m, info))
    except BaseException:
        files.delete_files([dst])
        raise
    return view(ctx, m)
