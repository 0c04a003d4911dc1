"""Snapshots of a registered medium: take, restore, delete (merge), list.

VirtualBox user manual §5.4-§5.5, per medium: ``take`` freezes the image the
disk is written through now and starts a new differencing image on it;
``restore`` throws the current differencing image away and starts a fresh
one on the chosen snapshot's image; ``delete`` merges the snapshot's image
with its neighbour (``snapshot_delete``).  The registry side -- rows, the
image tree, the current state -- is ``snapshot_store``.

Which media: normal ones.  Write-through and shareable media are left out
of snapshots (§5.4: their writes are never diverted); immutable and
multiattach media keep their clients' writes in per-client differencing
images instead; read-only media never change.

All of it works while clients are connected: the operation pauses the
medium's ``SwapLayer`` (requests in flight finish, new ones wait), changes
files and registry, swaps the chain and resumes -- no session sees an error
or stale data (``snapshot_live``).  Order, so that a crash leaves a usable
disk: new files are made first (an orphan at worst), the registry switches
in one transaction, obsolete files go last.
"""

from __future__ import annotations

import uuid as uuidlib
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from blockyard.block.chain_facts import remote_facts
from blockyard.block.chain_link import child_format, create_child
from blockyard.block.chain_swap import SwapLayer
from blockyard.block.formats import open_image
from blockyard.block.formats.base import ImageLayer
from blockyard.block.layer import Layer
from blockyard.block.remote import REMOTE_FORMAT
from blockyard.errors import ConflictError
from blockyard.media import files
from blockyard.media import snapshot_store as store
from blockyard.media.chain_open import medium_facts, open_chain
from blockyard.media.context import Context, medium_lock
from blockyard.media.model import Medium
from blockyard.media.snapshot_live import (
    chain_base,
    close_quietly,
    live_swap,
    overlay,
    rekey,
    stack_on,
)
from blockyard.media.snapshot_store import Disk, Snapshot

EXCLUDED = {
    "writethrough": "write-through media are left out of snapshots",
    "shareable": "shareable media are left out of snapshots (they are write-through)",
    "immutable": "an immutable medium keeps each client's writes in its own differencing "
                 "image instead",
    "multiattach": "a multiattach medium keeps each client's writes in its own "
                   "differencing image instead",
    "readonly": "a read-only medium never changes",
}


def check_mode(disk: Disk) -> None:
    why = EXCLUDED.get(disk.current.write_mode)
    if why:
        raise ConflictError(f"{disk.root.name} is {disk.current.write_mode}: {why}; "
                            "make it normal ('blockyard medium modify --type normal') to "
                            "take snapshots")


def locked_disk(ctx: Context, ref: str) -> tuple[Medium, AbstractAsyncContextManager[None]]:
    """The disk ``ref`` belongs to, and its lock (every snapshot operation holds it)."""
    root = store.disk_root(ctx.registry, ctx.registry.resolve(ref))
    return root, medium_lock(ctx, root.uuid, repr(ref))


def new_state(disk: Disk, on: Medium, state_dir: Path) -> Medium:
    """The row of a new current state: a managed child of ``on`` (the root's folder)."""
    fmt = child_format(on.format)
    uid = str(uuidlib.uuid4())
    path = store.snapshot_dir(disk.root, state_dir) / f"{uid}.{fmt}"
    cur = disk.current
    return Medium(uuid=uid, kind=cur.kind, format=fmt, location=str(path), parent_uuid=on.uuid,
                  write_mode=cur.write_mode, virtual_size=on.virtual_size,
                  autoreset=cur.autoreset, bandwidth_group=cur.bandwidth_group)


def make_child(row: Medium, over: Layer, on: Medium) -> ImageLayer:
    Path(row.location).parent.mkdir(parents=True, exist_ok=True)
    return create_child(row.location, medium_facts(over, on), row.format,
                        image_uuid=row.uuid)


async def make_child_offline(row: Medium, on: Medium) -> None:
    if on.format == REMOTE_FORMAT:  # a LUN's facts are its registry row's
        facts = remote_facts(on.location, on.virtual_size, on.uuid)
        Path(row.location).parent.mkdir(parents=True, exist_ok=True)
        await create_child(row.location, facts, row.format, image_uuid=row.uuid).close()
        return
    img = open_image(on.location, read_only=True, fmt=on.format)
    try:
        child = make_child(row, img, on)
    finally:
        await img.close()
    await child.close()


# ---- take ----------------------------------------------------------------------------------
async def snapshot_take(ctx: Context, ref: str, name: str | None = None,
                        description: str = "") -> dict[str, Any]:
    root, lock = locked_disk(ctx, ref)
    async with lock:
        disk = store.load(ctx.registry, root)
        check_mode(disk)
        cur = disk.current
        parent = disk.current_snapshot
        snap = Snapshot(str(uuidlib.uuid4()), name or f"Snapshot {len(disk.snaps) + 1}",
                        description, parent.uuid if parent else None, cur.uuid, "")
        row = new_state(disk, cur, ctx.registry.state_dir)
        swap = live_swap(ctx, cur)
        if swap is not None:
            await _take_live(ctx, swap, cur, row, snap)
            rekey(ctx, cur.uuid, row.uuid)
        else:
            await make_child_offline(row, cur)
            _commit(ctx, lambda: _commit_take(ctx, cur, row, snap), [row.location])
    return {"snapshot": snap.uuid, "name": snap.name, "frozen": cur.location,
            "current": row.location}


async def _take_live(ctx: Context, swap: SwapLayer, cur: Medium, row: Medium,
                     snap: Snapshot) -> None:
    async with swap.paused() as old:
        await old.flush()  # everything acknowledged so far belongs to the snapshot
        child = make_child(row, old, cur)
        try:
            ctx.registry.transact(lambda: _commit_take(ctx, cur, row, snap))
        except BaseException:
            await child.close()
            files.delete_files([row.location])
            raise
        swap.replace(stack_on(child, old))


def _commit_take(ctx: Context, cur: Medium, row: Medium, snap: Snapshot) -> None:
    reg = ctx.registry
    reg.insert_medium(row)
    store.insert(reg, snap)
    store.move_attachments(reg, cur.uuid, row.uuid)


def _commit(ctx: Context, fn: Any, made: list[str]) -> None:
    """Run a registry transaction; on failure remove the files made for it."""
    try:
        ctx.registry.transact(fn)
    except BaseException:
        files.delete_files(made)
        raise


# ---- restore --------------------------------------------------------------------------------
async def snapshot_restore(ctx: Context, ref: str, snapshot: str) -> dict[str, Any]:
    root, lock = locked_disk(ctx, ref)
    async with lock:
        disk = store.load(ctx.registry, root)
        check_mode(disk)
        snap = disk.find(snapshot)
        on = ctx.lookup(snap.medium_uuid)
        cur = disk.current
        row = new_state(disk, on, ctx.registry.state_dir)
        await make_child_offline(row, on)
        swap = live_swap(ctx, cur)
        if swap is not None:
            await _restore_live(ctx, swap, cur, row)
            rekey(ctx, cur.uuid, row.uuid)
        else:
            _commit(ctx, lambda: _commit_restore(ctx, cur, row), [row.location])
        files.delete_files([cur.location])  # the discarded state
    return {"snapshot": snap.uuid, "name": snap.name, "current": row.location,
            "discarded": cur.location}


async def _restore_live(ctx: Context, swap: SwapLayer, cur: Medium, row: Medium) -> None:
    async with swap.paused() as old:
        await old.flush()
        base = chain_base(old)  # a remote LUN the disk is built on stays logged in
        try:
            new = open_chain(row, overlay(ctx, row), base=base)
        except BaseException:
            files.delete_files([row.location])
            raise
        try:
            ctx.registry.transact(lambda: _commit_restore(ctx, cur, row))
        except BaseException:
            await close_quietly(new)
            files.delete_files([row.location])
            raise
        swap.replace(new)
    if old is not base:
        await close_quietly(old)


def _commit_restore(ctx: Context, cur: Medium, row: Medium) -> None:
    reg = ctx.registry
    reg.insert_medium(row)
    store.move_attachments(reg, cur.uuid, row.uuid)
    reg.delete_medium(cur.uuid)


# ---- list -------------------------------------------------------------------------------------
async def snapshot_list(ctx: Context, ref: str) -> dict[str, Any]:
    disk = store.load(ctx.registry, ctx.registry.resolve(ref))
    current = disk.current_snapshot
    out = []
    for s in disk.snaps:
        m = ctx.registry.medium(s.medium_uuid)
        out.append({**s.as_dict(), "image": m.location if m else None,
                    "current": current is not None and s.uuid == current.uuid})
    return {"medium": disk.root.uuid, "location": disk.root.location,
            "current_state": {"uuid": disk.current.uuid, "location": disk.current.location},
            "snapshots": out}

