"""Registered chains through the builder: a child registered with its parent is served
with its chain; a parent with children is served read-only; broken registered chains
(missing file, changed parent, a cycle, a plain image made a child) are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockyard.block.chain_facts import facts_of
from blockyard.block.chain_link import create_child
from blockyard.block.formats import open_image
from blockyard.errors import MediaError
from blockyard.media import builder, ops
from blockyard.media.chain_open import diff_path
from blockyard.media.context import Context

MiB = 1 << 20


async def _pair(ctx: Context, tmp_path: Path, fmt: str = "vdi") -> tuple[str, str]:
    p = await ops.media_add(ctx, str(tmp_path / f"p.{fmt}"), create_size="4M", format=fmt)
    img = open_image(p["location"])
    await img.pwrite(0, b"parent!!" * 64)
    await img.close()
    img = open_image(p["location"], read_only=True)
    kid = create_child(str(tmp_path / f"k.{fmt}"), facts_of(img), fmt)
    await img.close()
    await kid.close()
    k = await ops.media_add(ctx, str(tmp_path / f"k.{fmt}"))  # the file names its parent
    assert k["parent_uuid"] == p["uuid"]
    return p["uuid"], k["uuid"]


@pytest.mark.parametrize("fmt", ["vdi", "vhd", "vmdk"])
async def test_a_registered_child_is_served_with_its_chain(ctx: Context, tmp_path: Path,
                                                           fmt: str) -> None:
    parent, kid = await _pair(ctx, tmp_path, fmt)
    served = builder.serve(ctx.lookup(kid), ctx.lookup, state_dir=ctx.state_dir,
                           children=ctx.registry.children)
    assert served.hub.mode == "normal" and "chain[" in served.layer.describe()
    await served.layer.pwrite(512, b"kid" * 100)
    assert await served.layer.pread(0, 812) == b"parent!!" * 64 + b"kid" * 100
    await served.layer.close()
    ro = builder.serve(ctx.lookup(parent), ctx.lookup, state_dir=ctx.state_dir,
                       children=ctx.registry.children)
    assert ro.hub.mode == "readonly" and ro.layer.read_only  # a parent is never written
    await ro.layer.close()


async def test_broken_registered_chains(ctx: Context, tmp_path: Path) -> None:
    parent, kid = await _pair(ctx, tmp_path)
    img = open_image(tmp_path / "p.vdi")
    await img.pwrite(4096, b"behind the child's back")
    await img.close()
    with pytest.raises(MediaError, match="has changed since the link was made.*discard"):
        builder.build(ctx.lookup(kid), ctx.lookup)
    ctx.registry.transact(lambda: ctx.registry.update_medium(parent, parent_uuid=kid))
    with pytest.raises(MediaError, match="form a cycle"):
        builder.build(ctx.lookup(kid), ctx.lookup)
    ctx.registry.transact(lambda: ctx.registry.update_medium(parent, parent_uuid=None))
    (tmp_path / "p.vdi").unlink()
    with pytest.raises(MediaError, match="no such file .a medium of this chain is missing"):
        builder.build(ctx.lookup(kid), ctx.lookup)


async def test_a_child_without_its_registered_parent_is_refused(ctx: Context,
                                                                tmp_path: Path) -> None:
    from blockyard.block.formats import create_image
    from blockyard.media.model import Medium

    base = create_image(tmp_path / "b.vdi", 4 * MiB, "vdi")
    kid = create_child(str(tmp_path / "c.vdi"), facts_of(base), "vdi")
    await base.close()
    info = kid.info()
    await kid.close()
    with pytest.raises(MediaError, match="is not registered; add the parent first"):
        await ops.media_add(ctx, str(tmp_path / "c.vdi"))
    row = Medium(info.uuid or "", "hdd", "vdi", str(tmp_path / "c.vdi"))  # behind our back
    ctx.registry.transact(lambda: ctx.registry.insert_medium(row))
    with pytest.raises(MediaError, match="registered without its parent.*--parent"):
        builder.build(row, ctx.lookup)


def test_client_diff_names_show_medium_and_client(ctx: Context, tmp_path: Path) -> None:
    from blockyard.media.model import Medium

    m = Medium("1a2b3c4d-0000-0000-0000-000000000000", "hdd", "vdi", str(tmp_path / "d.vdi"))
    assert diff_path(ctx.state_dir, m, "iqn.2026-11.org:x y").name == \
        "d.vdi-1a2b3c4d--iqn.2026-11.org_x_y.vdi"
