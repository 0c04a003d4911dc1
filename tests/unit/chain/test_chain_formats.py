"""Differencing images of every format over every parent: reads fall through, partial
writes copy up, zeros mask the parent, parents stay untouched, chains and trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockyard.block.chain import ChainLayer
from blockyard.block.chain_find import open_chain_file
from blockyard.block.chain_link import child_format, is_child, relink
from blockyard.block.layer import HOLE, ZERO
from blockyard.errors import MediaError

from .chain_helpers import EXT, SIZE, MiB, digest, facts, make_child, make_image, read_all

PAIRS = [("vdi", "vdi"), ("vhd", "vhd"), ("vmdk", "vmdk"), ("raw", "vdi"), ("vdi", "vhd"),
         ("vhd", "vdi"), ("raw", "vhd")]


@pytest.mark.parametrize(("pf", "cf"), PAIRS)
async def test_child_reads_through_copies_up_and_masks(tmp_path: Path, pf: str, cf: str) -> None:
    base = await make_image(tmp_path / f"base.{EXT[pf]}", pf, {0: b"P" * (3 * MiB)})
    before = digest(base)
    child = await make_child(tmp_path / f"child.{EXT[cf]}", base, cf)
    chain = open_chain_file(str(child))
    assert isinstance(chain, ChainLayer) and chain.images[1].read_only
    model = bytearray(b"P" * (3 * MiB) + bytes(SIZE - 3 * MiB))
    for off, data in ((100, b"a" * 700), (MiB + 4096, b"b" * 512), (3 * MiB - 10, b"c" * 20)):
        await chain.pwrite(off, data)  # partial writes into blocks the child lacks
        model[off:off + len(data)] = data
    await chain.zero(2 * MiB, MiB)  # zeros must mask the parent's P's
    model[2 * MiB:3 * MiB] = bytes(MiB)
    assert await read_all(chain) == model
    await chain.close()
    reopened = open_chain_file(str(child), read_only=True)
    assert await read_all(reopened) == model
    assert sum(e.length for e in await reopened.extents(0, SIZE)) == SIZE
    await reopened.close()
    assert digest(base) == before  # a parent is never written


async def test_extents_resolve_through_the_chain(tmp_path: Path) -> None:
    base = await make_image(tmp_path / "base.vdi", "vdi", {0: b"x" * MiB})
    child = await make_child(tmp_path / "child.vdi", base, "vdi")
    chain = open_chain_file(str(child))
    await chain.pwrite(2 * MiB, b"y" * MiB)
    ext = await chain.extents(0, SIZE)
    assert [(e.length, e.flags) for e in ext] == [
        (MiB, 0), (MiB, HOLE | ZERO), (MiB, 0), (MiB, HOLE | ZERO)]
    await chain.close()


async def test_three_levels_and_a_tree(tmp_path: Path) -> None:
    base = await make_image(tmp_path / "base.vmdk", "vmdk", {0: b"0" * 4096})
    a = await make_child(tmp_path / "a.vmdk", base, "vmdk")
    chain = open_chain_file(str(a))
    await chain.pwrite(4096, b"1" * 4096)
    await chain.close()
    b = await make_child(tmp_path / "b.vmdk", a, "vmdk")
    sibling = await make_child(tmp_path / "sib.vdi", a, "vdi")  # a tree: two children of a
    for path, mark in ((b, b"2"), (sibling, b"3")):
        chain = open_chain_file(str(path))
        assert len(chain.images) == 3  # type: ignore[attr-defined]
        await chain.pwrite(8192, mark * 4096)
        await chain.close()
    for path, mark in ((b, b"2"), (sibling, b"3")):
        chain = open_chain_file(str(path), read_only=True)
        assert await chain.pread(0, 12288) == b"0" * 4096 + b"1" * 4096 + mark * 4096
        await chain.close()


async def test_relink_points_a_child_at_an_equal_parent(tmp_path: Path) -> None:
    first = await make_image(tmp_path / "p1.vhd", "vhd", {0: b"q" * 512})
    second = await make_image(tmp_path / "p2.vhd", "vhd", {0: b"q" * 512})
    child = await make_child(tmp_path / "c.vhd", first, "vhd")
    relink(str(child), "vhd", await facts(second))
    (first).unlink()
    chain = open_chain_file(str(child), read_only=True)
    assert chain.images[1].path == str(second)  # type: ignore[attr-defined]
    assert await chain.pread(0, 512) == b"q" * 512
    await chain.close()


def test_child_format_rules() -> None:
    assert child_format("raw") == "vdi" and child_format("parallels") == "vdi"
    assert child_format("vmdk") == "vmdk" and child_format("vhd", "vdi") == "vdi"
    with pytest.raises(MediaError, match="cannot be differencing"):
        child_format("vdi", "raw")


async def test_is_child_only_for_differencing_images(tmp_path: Path) -> None:
    from blockyard.block.formats import open_image

    base = await make_image(tmp_path / "b.vdi", "vdi")
    img = open_image(base, read_only=True)
    assert not is_child(img)
    await img.close()


async def test_vhd_locators_and_a_pair_moved_together(tmp_path: Path) -> None:
    from blockyard.block.formats import open_image

    (tmp_path / "a" / "kids").mkdir(parents=True)
    base = await make_image(tmp_path / "a" / "base.vhd", "vhd", {0: b"L" * 512})
    child = await make_child(tmp_path / "a" / "kids" / "c.vhd", base, "vhd")
    img = open_image(child, read_only=True)
    info = img.info()
    assert info.parent_hint == "base.vhd"  # §3.2: the unicode name is the file name only
    assert dict(info.extra["parent_locators"]) == {"W2ku": str(base),
                                                    "W2ru": ".\\..\\base.vhd"}
    await img.close()
    (tmp_path / "a").rename(tmp_path / "b")  # W2ku is stale now, W2ru still right
    chain = open_chain_file(str(tmp_path / "b" / "kids" / "c.vhd"), read_only=True)
    assert await chain.pread(0, 512) == b"L" * 512
    await chain.close()


@pytest.mark.parametrize("fmt", ["vdi", "vhd", "vmdk"])
async def test_a_chain_of_200_levels(tmp_path: Path, fmt: str) -> None:
    """Reads resolve level by level: no recursion limit however deep the chain."""
    path = await make_image(tmp_path / f"l0.{fmt}", fmt, {0: b"0" * 4096})
    for level in range(1, 200):
        path = await make_child(tmp_path / f"l{level}.{fmt}", path, fmt)
        if level == 100:
            mid = open_chain_file(str(path))
            await mid.pwrite(8192, b"m" * 4096)
            await mid.close()
    chain = open_chain_file(str(path))
    await chain.pwrite(10, b"t" * 10)
    assert await chain.pread(0, 12288) == b"0" * 10 + b"t" * 10 + b"0" * 4076 + bytes(
        4096) + b"m" * 4096
    assert (await chain.extents(0, SIZE))[-1].flags == HOLE | ZERO
    await chain.close()
