"""Media operations on the database directly (no server): each rule a test that fails
without it."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from pathlib import Path

import pytest
from media_helpers import raw_file

from blockyard.block.formats import open_image
from blockyard.errors import BlockError, ConfigError, ConflictError, MediaError, NotFoundError
from blockyard.media import attach_ops, builder, context, modify, ops
from blockyard.media.context import Context, medium_lock

MiB = 1 << 20


async def test_raw_gets_a_registry_uuid_and_vdi_keeps_its_own(ctx: Context,
                                                              tmp_path: Path) -> None:
    raw = await ops.media_add(ctx, str(raw_file(tmp_path / "a.img", MiB)))
    assert raw["uuid_source"] == "registry" and len(raw["uuid"]) == 36
    vdi = await ops.media_add(ctx, str(tmp_path / "b.vdi"), create_size="4M", format="vdi")
    layer = open_image(tmp_path / "b.vdi", read_only=True)
    assert vdi["uuid"] == layer.info().uuid and vdi["uuid_source"] == "image"
    await layer.close()
    iso_kind = await ops.media_add(ctx, str(raw_file(tmp_path / "f.img", 1474560)),
                                   kind="floppy")
    assert iso_kind["kind"] == "floppy" and iso_kind["write_mode"] == "normal"


async def test_same_file_twice_and_a_copy_with_a_known_uuid_are_refused(ctx: Context,
                                                                        tmp_path: Path) -> None:
    await ops.media_add(ctx, str(tmp_path / "a.vdi"), create_size="4M", format="vdi")
    with pytest.raises(ConflictError, match="already registered"):
        await ops.media_add(ctx, str(tmp_path / "a.vdi"))
    shutil.copy(tmp_path / "a.vdi", tmp_path / "copy.vdi")
    with pytest.raises(ConflictError, match="medium clone"):
        await ops.media_add(ctx, str(tmp_path / "copy.vdi"))
    assert len(ctx.registry.media()) == 1


async def test_relative_paths_are_refused(ctx: Context) -> None:
    with pytest.raises(ConfigError, match="absolute"):
        await ops.media_add(ctx, "disk.img")


async def test_create_that_cannot_register_leaves_no_file(ctx: Context, tmp_path: Path) -> None:
    await ops.media_add(ctx, str(raw_file(tmp_path / "p.img", MiB)))
    with pytest.raises(NotFoundError):
        await ops.media_add(ctx, str(tmp_path / "new.img"), create_size="1M", parent="nope")
    assert not (tmp_path / "new.img").exists()


@pytest.mark.parametrize("fmt", ["raw", "vdi", "vhd", "vmdk", "parallels"])
async def test_clone_keeps_bytes_and_sparseness_with_a_new_uuid(ctx: Context, tmp_path: Path,
                                                                fmt: str) -> None:
    src = raw_file(tmp_path / "src.img", 64 * MiB, {0: b"A" * 4096, 40 * MiB: b"B" * 8192})
    first = await ops.media_add(ctx, str(src))
    copy = await modify.media_clone(ctx, "src.img", str(tmp_path / f"dst.{fmt}"), format=fmt)
    assert copy["uuid"] != first["uuid"] and copy["format"] == fmt
    assert copy["allocated_size"] < 8 * MiB  # only the two chunks' blocks
    layer = open_image(copy["location"], read_only=True)
    assert bytes(await layer.pread(0, 4096)) == b"A" * 4096
    assert bytes(await layer.pread(40 * MiB, 8192)) == b"B" * 8192
    assert bytes(await layer.pread(20 * MiB, 4096)) == bytes(4096)
    await layer.close()
    back = await modify.media_clone(ctx, copy["uuid"], str(tmp_path / "back.img"),
                                    format="raw")  # and the copy as a source, to raw
    assert (tmp_path / "back.img").read_bytes() == src.read_bytes()
    assert back["allocated_size"] < 8 * MiB


async def test_clone_failure_leaves_no_half_copy(ctx: Context, tmp_path: Path) -> None:
    await ops.media_add(ctx, str(raw_file(tmp_path / "s.img", MiB)))
    with pytest.raises(MediaError):
        await modify.media_clone(ctx, "s.img", str(tmp_path / "d.vdi"), format="vdi",
                                 variant="bogus")
    assert not (tmp_path / "d.vdi").exists() and len(ctx.registry.media()) == 1


async def test_move_carries_vmdk_extents_and_refuses_to_overwrite(ctx: Context,
                                                                  tmp_path: Path) -> None:
    m = await ops.media_add(ctx, str(tmp_path / "d.vmdk"), create_size="8M", format="vmdk",
                            variant="split2g")
    before = set(os.listdir(tmp_path))
    (tmp_path / "new").mkdir()
    raw_file(tmp_path / "new" / "taken.vmdk", 1)
    with pytest.raises(MediaError, match="already exists"):
        await modify.media_modify(ctx, "d.vmdk", move=str(tmp_path / "new" / "taken.vmdk"))
    moved = await modify.media_modify(ctx, m["uuid"], move=str(tmp_path / "new"))
    assert moved["location"] == str(tmp_path / "new" / "d.vmdk")
    assert set(os.listdir(tmp_path)) == before - {"d.vmdk"} - {
        n for n in before if n.startswith("d-")} | {"new"}
    layer = open_image(moved["location"], read_only=True)  # extents found beside it
    assert layer.size == 8 * MiB
    await layer.close()


async def test_remove_refuses_parents_and_attached_then_deletes(ctx: Context,
                                                                tmp_path: Path) -> None:
    await ops.media_add(ctx, str(raw_file(tmp_path / "p.img", MiB)))
    await ops.media_add(ctx, str(raw_file(tmp_path / "c.img", MiB)), parent="p.img")
    with pytest.raises(ConflictError, match="has children: .*c.img"):
        await ops.media_remove(ctx, "p.img")
    await attach_ops.controller_add(ctx, "s", "sata")
    await attach_ops.attach(ctx, "s", "c.img", port=7)
    with pytest.raises(ConflictError, match="attached at s:7"):
        await ops.media_remove(ctx, "c.img")
    released = await ops.media_release(ctx, "c.img")
    assert [d["port"] for d in released["detached"]] == [7]
    await ops.media_remove(ctx, "c.img", delete=True)
    assert not (tmp_path / "c.img").exists()
    await ops.media_remove(ctx, "p.img")
    assert (tmp_path / "p.img").exists() and ctx.registry.media() == []


async def test_refresh_and_clear_inaccessible_forget_only_removable_media(
        ctx: Context, tmp_path: Path) -> None:
    for name, kind in [("cd.img", "dvd"), ("fd.img", "floppy"), ("hd.img", "hdd")]:
        await ops.media_add(ctx, str(raw_file(tmp_path / name, 1474560)), kind=kind)
    await attach_ops.controller_add(ctx, "ide", "ide")
    await attach_ops.attach(ctx, "ide", "cd.img", port=1)
    for name in ("cd.img", "fd.img", "hd.img"):
        os.rename(tmp_path / name, tmp_path / (name + ".gone"))
    listed = {m["name"]: m["accessible"] for m in await ops.media_list(ctx)}
    assert listed == {"cd.img": False, "fd.img": False, "hd.img": False}
    os.rename(tmp_path / "fd.img.gone", tmp_path / "fd.img")  # came back
    removed = await ops.media_clear_inaccessible(ctx)
    assert [r["location"] for r in removed] == [str(tmp_path / "cd.img")]
    assert removed[0]["detached"][0]["port"] == 1
    left = {m.name: m.accessible for m in ctx.registry.media()}
    assert left == {"fd.img": True, "hd.img": False}


async def test_attach_rules(ctx: Context, tmp_path: Path) -> None:
    await attach_ops.controller_add(ctx, "u", "usb")
    assert ctx.registry.controller("u").slots == 8
    await ops.media_add(ctx, str(raw_file(tmp_path / "n.img", MiB)))
    await ops.media_add(ctx, str(raw_file(tmp_path / "r.img", MiB)), write_mode="readonly")
    await attach_ops.attach(ctx, "u", "n.img")
    with pytest.raises(ConflictError, match="attached at u:0 already"):
        await attach_ops.attach(ctx, "u", "n.img")
    await attach_ops.attach(ctx, "u", "r.img", name="ro-a")
    await attach_ops.attach(ctx, "u", "r.img", name="ro-b")  # read-only media may repeat
    with pytest.raises(ConflictError, match="export name 'ro-a'"):
        await attach_ops.attach(ctx, "u", "r.img", name="ro-a")
    with pytest.raises(ConfigError, match="ports 0-7"):
        await attach_ops.attach(ctx, "u", "r.img", port=8)
    with pytest.raises(ConflictError, match="write mode cannot change while attached"):
        await modify.media_modify(ctx, "n.img", write_mode="immutable")
    with pytest.raises(ConflictError, match="still has attachments"):
        await attach_ops.controller_remove(ctx, "u")
    with pytest.raises(NotFoundError):
        await attach_ops.detach(ctx, "u", 6)
    with pytest.raises(ConflictError, match="exists already"):
        await attach_ops.controller_add(ctx, "u", "sata")


async def test_attach_mtype_sets_the_write_mode(ctx: Context, tmp_path: Path) -> None:
    await attach_ops.controller_add(ctx, "c", "virtio-scsi")
    assert ctx.registry.controller("c").slots == 256
    await ops.media_add(ctx, str(raw_file(tmp_path / "d.img", MiB)))
    r = await attach_ops.attach(ctx, "c", "d.img", mtype="readonly")
    assert r["medium"]["write_mode"] == "readonly"


async def test_busy_medium_is_a_conflict_and_the_registry_is_untouched(
        ctx: Context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = await ops.media_add(ctx, str(raw_file(tmp_path / "d.img", MiB)), description="old")
    monkeypatch.setattr(context, "LOCK_WAIT", 0.2)
    async with medium_lock(ctx, m["uuid"], "d.img"):
        with pytest.raises(ConflictError, match="busy with another command"):
            await modify.media_modify(ctx, "d.img", description="new")
    assert ctx.registry.resolve("d.img").description == "old"


async def test_racing_modifications_on_one_medium_serialise(ctx: Context,
                                                           tmp_path: Path) -> None:
    await ops.media_add(ctx, str(raw_file(tmp_path / "d.img", MiB)))
    results = await asyncio.gather(
        modify.media_modify(ctx, "d.img", resize="2M"),
        ops.media_remove(ctx, "d.img"), return_exceptions=True)
    # either order is fine; both consistent: removed, or resized then removed
    assert not [r for r in results if isinstance(r, Exception)
                and not isinstance(r, NotFoundError)]
    assert ctx.registry.media() == []


async def test_builder_write_modes_and_refusals(ctx: Context, tmp_path: Path) -> None:
    for mode in ("readonly", "immutable", "normal"):
        m = await ops.media_add(ctx, str(raw_file(tmp_path / f"{mode}.img", MiB)),
                                write_mode=mode)
        layer = builder.build(ctx.lookup(m["uuid"]), ctx.lookup)
        if mode == "normal":
            await layer.pwrite(0, b"x" * 512)
        else:
            assert layer.read_only
            with pytest.raises(BlockError) as err:
                await layer.pwrite(0, b"x" * 512)
            assert err.value.errno == errno.EPERM
        await layer.close()
    child = await ops.media_add(ctx, str(raw_file(tmp_path / "kid.img", MiB)),
                                parent="normal.img")
    with pytest.raises(MediaError, match="differencing"):
        builder.build(ctx.lookup(child["uuid"]), ctx.lookup)


async def test_compact_and_resize_update_the_registered_sizes(ctx: Context,
                                                             tmp_path: Path) -> None:
    m = await ops.media_add(ctx, str(tmp_path / "d.img"), create_size="8M")
    with open(tmp_path / "d.img", "r+b") as f:
        f.write(bytes(4 * MiB))  # allocated blocks full of zeroes
        os.fsync(f.fileno())
    grown = await ops.media_refresh(ctx)
    assert grown[0]["allocated_size"] >= 4 * MiB
    done = await modify.media_modify(ctx, m["uuid"], compact=True, resize="16M")
    assert done["allocated_size"] < MiB and done["virtual_size"] == 16 * MiB


def test_state_dir_comes_from_the_flag_then_the_environment(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import argparse

    from blockyard.cli.client import state_dir_of

    monkeypatch.setenv("BLOCKYARD_STATE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir_of(argparse.Namespace(state_dir=str(tmp_path / "flag"))) == \
        tmp_path / "flag"
    assert state_dir_of(argparse.Namespace(state_dir=None)) == tmp_path / "env"
    monkeypatch.delenv("BLOCKYARD_STATE_DIR")
    assert state_dir_of(argparse.Namespace()) == tmp_path / "xdg" / "blockyard"
