"""Snapshot operations on the registry and files (no server): every rule a test that
fails without it -- rows and files, refusals, a merge that does not fit, clean failures."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from blockyard.block.formats import open_image
from blockyard.errors import ConflictError, MediaError, NotFoundError
from blockyard.media import attach_ops, builder, modify, ops, snapshot_merge
from blockyard.media import snapshot_store as store
from blockyard.media.context import Context
from blockyard.media.snapshot_delete import delete_snapshot, snapshot_delete
from blockyard.media.snapshots import snapshot_list, snapshot_restore, snapshot_take

MiB = 1 << 20


async def _disk(ctx: Context, tmp_path: Path, fmt: str = "vdi", mode: str | None = None,
                data: bytes = b"base") -> dict[str, Any]:
    m = await ops.media_add(ctx, str(tmp_path / f"disk.{fmt}"), create_size="4M", format=fmt,
                            write_mode=mode)
    img = open_image(m["location"])
    await img.pwrite(0, data * (512 // len(data)))
    await img.close()
    return m


async def _write(ctx: Context, ref: str, off: int, data: bytes) -> None:
    disk = store.load(ctx.registry, ctx.registry.resolve(ref))
    layer = builder.build(disk.current, ctx.lookup, children=ctx.registry.children)
    await layer.pwrite(off, data)
    await layer.close()


async def _read(ctx: Context, medium_uuid: str, n: int = 512) -> bytes:
    layer = builder.open_visible(ctx.lookup(medium_uuid), ctx.lookup, read_only=True)
    try:
        return bytes(await layer.pread(0, n))
    finally:
        await layer.close()


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "state" not in p.parts}


async def test_take_list_restore_and_attachments_follow(ctx: Context, tmp_path: Path) -> None:
    m = await _disk(ctx, tmp_path)
    await attach_ops.controller_add(ctx, "c", "sata")
    await attach_ops.attach(ctx, "c", "disk.vdi")
    first = await snapshot_take(ctx, "disk.vdi", description="clean")
    assert first["name"] == "Snapshot 1" and first["frozen"] == m["location"]
    cur = Path(first["current"])
    assert cur.parent.name == "Snapshots" and cur.stem == ctx.registry.medium(
        cur.stem).uuid  # type: ignore[union-attr]
    assert ctx.registry.attachments()[0].medium_uuid == cur.stem  # the slot follows
    await _write(ctx, "disk.vdi", 0, b"new!" * 128)
    second = await snapshot_take(ctx, cur.stem, name="after")  # any image names the disk
    listing = await snapshot_list(ctx, "disk.vdi")
    assert [(s["name"], s["current"], s["parent"]) for s in listing["snapshots"]] == [
        ("Snapshot 1", False, None), ("after", True, first["snapshot"])]
    assert listing["current_state"]["location"] == second["current"]
    r = await snapshot_restore(ctx, "disk.vdi", "Snapshot 1")
    assert not os.path.exists(second["current"]) and os.path.exists(r["current"])
    assert await _read(ctx, Path(r["current"]).stem) == b"base" * 128
    after = store.load(ctx.registry, ctx.registry.resolve("disk.vdi"))
    assert ctx.registry.attachments()[0].medium_uuid == after.current.uuid
    assert after.current_snapshot is not None and after.current_snapshot.name == "Snapshot 1"


@pytest.mark.parametrize(("mode", "why"), [
    ("writethrough", "left out of snapshots"), ("shareable", "left out of snapshots"),
    ("immutable", "own differencing"), ("multiattach", "own differencing"),
    ("readonly", "never changes")])
async def test_modes_left_out_of_snapshots(ctx: Context, tmp_path: Path, mode: str,
                                           why: str) -> None:
    fmt = "raw" if mode == "shareable" else "vdi"
    await _disk(ctx, tmp_path, fmt, mode)
    before = _digests(tmp_path)
    with pytest.raises(ConflictError, match=why) as err:
        await snapshot_take(ctx, f"disk.{fmt}")
    assert "medium modify --type normal" in str(err.value)
    assert _digests(tmp_path) == before and len(ctx.registry.media()) == 1


async def test_unknown_and_ambiguous_snapshots(ctx: Context, tmp_path: Path) -> None:
    await _disk(ctx, tmp_path)
    await snapshot_take(ctx, "disk.vdi", name="same")
    await snapshot_take(ctx, "disk.vdi", name="same")
    with pytest.raises(NotFoundError, match="no snapshot 'nope'.*snapshot list"):
        await snapshot_restore(ctx, "disk.vdi", "nope")
    with pytest.raises(ConflictError, match="2 snapshots are named 'same'; use its UUID"):
        await snapshot_restore(ctx, "disk.vdi", "same")


async def test_delete_a_leaf_drops_its_image_and_a_branch_point_is_refused(
        ctx: Context, tmp_path: Path) -> None:
    await _disk(ctx, tmp_path)
    s1 = await snapshot_take(ctx, "disk.vdi", name="s1")
    s2 = await snapshot_take(ctx, "disk.vdi", name="s2")
    await snapshot_restore(ctx, "disk.vdi", "s1")  # s1's image now has two children
    with pytest.raises(ConflictError, match="followed by 2 branches"):
        await snapshot_delete(ctx, "disk.vdi", "s1")
    await snapshot_restore(ctx, "disk.vdi", "s2")
    leaf = await snapshot_take(ctx, "disk.vdi", name="s3")
    await snapshot_restore(ctx, "disk.vdi", "s2")  # s3's image: no child any more
    r = await delete_snapshot(ctx, "disk.vdi", "s3")
    assert r["merged"] == 0 and not os.path.exists(leaf["frozen"])
    names = [s["name"] for s in (await snapshot_list(ctx, "disk.vdi"))["snapshots"]]
    assert names == ["s1", "s2"] and os.path.exists(s2["frozen"]) and s1["snapshot"]


async def test_delete_merges_into_the_disk_file_and_reparents_snapshots(
        ctx: Context, tmp_path: Path) -> None:
    m = await _disk(ctx, tmp_path, "vhd")
    await snapshot_take(ctx, "disk.vhd", name="s1")
    await _write(ctx, "disk.vhd", 0, b"two!" * 128)
    await snapshot_take(ctx, "disk.vhd", name="s2")
    await _write(ctx, "disk.vhd", 512, b"3" * 512)
    seen: list[tuple[int, int]] = []
    r = await delete_snapshot(ctx, "disk.vhd", "s1", lambda d, t: seen.append((d, t)))
    assert r["into"] == m["location"] and seen and seen[-1][0] == seen[-1][1] == r["merged"]
    s2 = (await snapshot_list(ctx, "disk.vhd"))["snapshots"]
    assert [(s["name"], s["parent"], s["medium_uuid"]) for s in s2] == [("s2", None, m["uuid"])]
    assert await _read(ctx, m["uuid"]) == b"two!" * 128  # s2's state now lives in disk.vhd
    await delete_snapshot(ctx, "disk.vhd", "s2")
    assert [x.location for x in ctx.registry.media()] == [m["location"]]
    assert await _read(ctx, m["uuid"], 1024) == b"two!" * 128 + b"3" * 512
    assert os.listdir(tmp_path / "Snapshots") == []


async def test_a_merge_that_does_not_fit_is_refused_untouched(
        ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await _disk(ctx, tmp_path, "raw")
    await snapshot_take(ctx, "disk.raw", name="s1")
    await _write(ctx, "disk.raw", MiB, b"x" * (2 * MiB))
    monkeypatch.setattr(snapshot_merge, "free_space", lambda path: MiB)
    before, rows = _digests(tmp_path), ctx.registry.media()
    with pytest.raises(MediaError) as err:
        await snapshot_delete(ctx, "disk.raw", "s1")
    text = str(err.value)
    assert "needs 2097152 more bytes" in text and "free some space first" in text
    assert _digests(tmp_path) == before and ctx.registry.media() == rows


async def test_a_failed_registration_leaves_no_file(ctx: Context, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    await _disk(ctx, tmp_path)

    def broken(*_a: object) -> None:
        raise ConflictError("registry refused")
    monkeypatch.setattr(store, "insert", broken)
    with pytest.raises(ConflictError, match="registry refused"):
        await snapshot_take(ctx, "disk.vdi")
    assert os.listdir(tmp_path / "Snapshots") == [] and len(ctx.registry.media()) == 1


async def test_clone_flattens_the_current_state(ctx: Context, tmp_path: Path) -> None:
    await _disk(ctx, tmp_path)
    taken = await snapshot_take(ctx, "disk.vdi")
    await _write(ctx, "disk.vdi", 3 * MiB, b"top" * 100)
    cur = Path(taken["current"]).stem
    c = await modify.media_clone(ctx, cur, str(tmp_path / "flat.vmdk"), format="vmdk")
    assert c["parent_uuid"] is None and c["uuid"] != cur
    img = open_image(tmp_path / "flat.vmdk", read_only=True)
    assert await img.pread(0, 512) == b"base" * 128
    assert await img.pread(3 * MiB, 300) == b"top" * 100
    assert img.info().allocated_size < MiB  # sparse: only what holds data
    await img.close()
    with pytest.raises(MediaError, match="already exists"):
        await modify.media_clone(ctx, cur, str(tmp_path / "flat.vmdk"))


async def test_mode_change_refused_while_the_current_state_is_attached(
        ctx: Context, tmp_path: Path) -> None:
    await _disk(ctx, tmp_path)
    taken = await snapshot_take(ctx, "disk.vdi")
    await attach_ops.controller_add(ctx, "c", "sata")
    await attach_ops.attach(ctx, "c", Path(taken["current"]).stem)
    with pytest.raises(ConflictError, match="cannot change while attached.*detach"):
        await modify.media_modify(ctx, Path(taken["current"]).stem, write_mode="immutable")
