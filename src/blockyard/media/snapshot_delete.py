"""Deleting a snapshot: merge its image with the state that follows it.

A snapshot S is held by a frozen image M.  What happens depends on M's
children (VirtualBox user manual §5.5):

* none -- M holds a snapshot nobody builds on any more (an older state was
  restored since): M is dropped with S;
* one, C -- C is merged *into* M: everything C holds is copied down into M
  (``snapshot_merge.copy_down``), then M takes C's place: C's children are
  relinked to M, snapshots held by C are held by M, attachments on C move
  to M, and C's file is removed.  M keeps its identity, so deleting the
  first snapshot of a disk writes into the disk's own file.  The merge
  needs room only for the blocks C holds that M has not allocated;
  ``check_space`` refuses up front when the file system has less;
* several -- S is a branch point; delete the snapshots of all branches but
  one first.

Theory of operation for a served disk (the current state's ``SwapLayer``):

1. pause; close the chain; reopen it with M read-write (its content is
   masked by C, so nothing a client reads changes); resume;
2. copy C into M while clients go on; when C is the current state the
   ranges they write meanwhile are recorded (``SwapLayer.track``);
3. pause; copy the recorded ranges again; flush and close; relink C to M's
   new identity (M's modification UUID / CID changed while writing it, and
   a crash must still find a valid chain); one registry transaction makes
   M take C's place; relink C's children to M; open the new chain, swap,
   resume; remove C's file.

A failure before the transaction reopens the old chain and leaves the old
structure, with M holding extra blocks that C masks (harmless).  A crash
after the transaction but before a child of C is relinked leaves that
child's link naming C: opening it then reports the mismatch.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from blockyard.block.chain import ChainLayer
from blockyard.block.chain_facts import remote_facts
from blockyard.block.chain_link import relink
from blockyard.block.chain_swap import SwapLayer
from blockyard.block.formats import open_image
from blockyard.block.layer import Layer
from blockyard.block.remote import REMOTE_FORMAT
from blockyard.errors import ConflictError, MediaError
from blockyard.media import files, snapshot_merge
from blockyard.media import snapshot_store as store
from blockyard.media.chain_open import lineage, parent_facts
from blockyard.media.context import Context
from blockyard.media.model import Medium
from blockyard.media.remote_chain import registered_chain
from blockyard.media.snapshot_live import (
    chain_base,
    close_quietly,
    host_cache,
    live_swap,
    rekey,
    reopen,
)
from blockyard.media.snapshot_merge import Progress, copy_down, needed_bytes
from blockyard.media.snapshot_store import Disk, Snapshot
from blockyard.media.snapshots import check_mode, locked_disk

log = logging.getLogger("blockyard.snapshots")


async def snapshot_delete(ctx: Context, ref: str, snapshot: str) -> dict[str, Any]:
    """The control-API operation: merge with progress in the server's log."""
    return await delete_snapshot(ctx, ref, snapshot, _log_progress(snapshot))


async def delete_snapshot(ctx: Context, ref: str, snapshot: str,
                          progress: Progress | None = None) -> dict[str, Any]:
    root, lock = locked_disk(ctx, ref)
    async with lock:
        disk = store.load(ctx.registry, root)
        check_mode(disk)
        snap = disk.find(snapshot)
        image = ctx.lookup(snap.medium_uuid)
        kids = ctx.registry.children(image.uuid)
        if not kids:
            await _drop(ctx, disk, snap, image)
            return {"deleted": snap.uuid, "name": snap.name, "merged": 0,
                    "removed": image.location}
        if len(kids) > 1:
            raise ConflictError(f"snapshot {snap.name!r} of {root.name} is followed by "
                                f"{len(kids)} branches; delete the snapshots of all but one "
                                "branch first")
        child = kids[0]
        if not store.is_managed(child):
            raise ConflictError(f"{image.location} has a child made outside snapshots "
                                f"({child.location}); remove that child first")
        served = ctx.live.open_layer(disk.current.uuid) if ctx.live is not None else None
        if served is not None:
            await served.flush()  # the files then show what the sessions wrote
        await check_space(child, image)
        merged = await _merge(ctx, disk, snap, image, child, progress)
    return {"deleted": snap.uuid, "name": snap.name, "merged": merged,
            "removed": child.location, "into": image.location}


def _log_progress(name: str) -> Progress:
    last = [-1]

    def report(done: int, total: int) -> None:
        tenth = 10 * done // total if total else 10
        if tenth != last[0]:
            last[0] = tenth
            log.info("merging snapshot %s: %d%%", name, 10 * tenth)
    return report


async def check_space(child: Medium, image: Medium) -> None:
    """Refuse a merge the parent's file system has no room for (nothing is touched).
    A remote LUN has all its blocks already: nothing to check."""
    if image.format == REMOTE_FORMAT:
        return
    c = open_image(child.location, read_only=True, fmt=child.format)
    m = open_image(image.location, read_only=True, fmt=image.format)
    try:
        need = await needed_bytes(c, m)
    finally:
        await c.close()
        await m.close()
    free = snapshot_merge.free_space(image.location)  # a module attribute: tests shrink it
    if need > free:
        raise MediaError(f"{image.location}: merging the snapshot needs {need} more bytes, "
                         f"its file system has {free} free; free some space first")


async def _drop(ctx: Context, disk: Disk, snap: Snapshot, image: Medium) -> None:
    if image.uuid == disk.root.uuid or image.uuid == disk.current.uuid:
        raise ConflictError(f"{image.location} is still in use by {disk.root.name}")

    def commit() -> None:
        store.reparent_children(ctx.registry, snap.uuid, snap.parent)
        store.delete(ctx.registry, snap.uuid)
        ctx.registry.delete_medium(image.uuid)
    ctx.registry.transact(commit)
    files.delete_files([image.location])


def image_of(chain: Layer, m: Medium) -> Layer:
    if m.format == REMOTE_FORMAT and isinstance(chain, ChainLayer) and chain.below is not None:
        return chain.below  # the remote LUN the chain is built on
    images = chain.images if isinstance(chain, ChainLayer) else []
    for img in images:
        if os.path.abspath(img.path) == os.path.abspath(m.location):
            return img
    raise MediaError(f"{m.location} is not in the chain {chain.describe()}")


async def _merge(ctx: Context, disk: Disk, snap: Snapshot, image: Medium, child: Medium,
                 progress: Progress | None) -> int:
    served = {m.uuid for m in lineage(disk.current, ctx.lookup)}
    swap = live_swap(ctx, disk.current) if child.uuid in served else None  # else: not open
    writable = frozenset({image.uuid})
    if swap is None:
        async with registered_chain(child, ctx.lookup, writable=writable) as work:
            done = await copy_down(image_of(work, child), image_of(work, image), None, progress)
            await work.flush()
        await _finish(ctx, snap, image, child)
        files.delete_files([child.location])
        return done
    async with swap.paused() as old:  # 1: M writable under the sessions
        await old.flush()
        base = chain_base(old)  # a remote LUN stays logged in (the daemon owns it)
        await close_quietly(old)
        reopen(swap, disk.current, ctx.lookup, writable=writable, fallback=disk.current,
               base=base)
    done = await _copy_live(ctx, swap, disk, snap, image, child, progress)
    if child.uuid == disk.current.uuid:
        rekey(ctx, child.uuid, image.uuid)
    files.delete_files([child.location])
    return done


async def _copy_live(ctx: Context, swap: SwapLayer, disk: Disk, snap: Snapshot,
                     image: Medium, child: Medium, progress: Progress | None) -> int:
    is_current = child.uuid == disk.current.uuid
    work = swap.chain
    base = chain_base(work)
    c_img, m_img = image_of(work, child), image_of(work, image)
    if is_current:
        swap.track()
    try:
        done = await copy_down(c_img, m_img, None, progress)  # 2: clients go on
    except BaseException:
        swap.untrack()
        async with swap.paused() as w:
            await close_quietly(w)
            reopen(swap, disk.current, ctx.lookup, base=base)
        raise
    async with swap.paused() as w:  # 3
        done += await copy_down(c_img, m_img, swap.untrack())
        await w.flush()
        await close_quietly(w)
        try:
            await _finish(ctx, snap, image, child)
        except BaseException:
            reopen(swap, disk.current, ctx.lookup, base=base)
            raise
        now = ctx.lookup(image.uuid if is_current else disk.current.uuid)
        reopen(swap, now, ctx.lookup, host_cache=host_cache(ctx, now), base=base)
    return done


async def _finish(ctx: Context, snap: Snapshot, image: Medium, child: Medium) -> None:
    """Relink, then one registry transaction: M takes C's place (C is closed)."""
    if image.format == REMOTE_FORMAT:  # a LUN keeps its identity when written
        facts = remote_facts(image.location, image.virtual_size, image.uuid)
    else:
        img = open_image(image.location, read_only=True, fmt=image.format)
        try:
            facts = parent_facts(img, image)
        finally:
            await img.close()
    relink(child.location, child.format, facts)  # a crash from here on still opens
    kids = ctx.registry.children(child.uuid)

    def commit() -> None:
        reg = ctx.registry
        store.reparent_media(reg, child.uuid, image.uuid)
        store.move_attachments(reg, child.uuid, image.uuid)
        store.move_image(reg, child.uuid, image.uuid)
        store.reparent_children(reg, snap.uuid, snap.parent)
        store.delete(reg, snap.uuid)
        reg.delete_medium(child.uuid)
    ctx.registry.transact(commit)
    for kid in kids:
        relink(kid.location, kid.format, facts)
