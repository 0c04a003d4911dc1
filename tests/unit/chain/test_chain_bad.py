"""Broken chains: a missing, moved or changed parent, a cycle -- one-line errors that
say what to do, and nothing on disk changed by the failed open."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from blockyard.block.chain_find import open_chain_file
from blockyard.block.chain_link import relink
from blockyard.block.formats import open_image
from blockyard.errors import MediaError

from .chain_helpers import EXT, digest, facts, make_child, make_image


def _one_line(exc: pytest.ExceptionInfo[MediaError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("fmt", ["vdi", "vhd", "vmdk"])
async def test_missing_parent(tmp_path: Path, fmt: str) -> None:
    base = await make_image(tmp_path / f"base.{EXT[fmt]}", fmt, {0: b"z" * 512})
    child = await make_child(tmp_path / f"child.{EXT[fmt]}", base, fmt)
    before = digest(child)
    base.unlink()
    with pytest.raises(MediaError) as err:
        open_chain_file(str(child))
    text = _one_line(err)
    assert "missing or was moved" in text and "put it back" in text
    assert digest(child) == before


async def test_moved_vmdk_parent_is_missing_but_a_moved_vdi_parent_is_found(
        tmp_path: Path) -> None:
    vm = await make_image(tmp_path / "vm.vmdk", "vmdk")
    vmc = await make_child(tmp_path / "vmc.vmdk", vm, "vmdk")
    (tmp_path / "far" / "away").mkdir(parents=True)
    vm.rename(tmp_path / "far" / "away" / "vm.vmdk")  # out of the hint's and the scan's reach
    with pytest.raises(MediaError, match="'vm.vmdk'.*missing or was moved"):
        open_chain_file(str(vmc))
    vd = await make_image(tmp_path / "vd.vdi", "vdi", {0: b"v" * 512})
    vdc = await make_child(tmp_path / "vdc.vdi", vd, "vdi")
    vd.rename(tmp_path / "renamed.vdi")  # §1.4: a VDI finds its parent by UUID
    chain = open_chain_file(str(vdc), read_only=True)
    assert await chain.pread(0, 512) == b"v" * 512
    await chain.close()


async def test_vdi_snapshot_layout_parent_one_directory_up(tmp_path: Path) -> None:
    base = await make_image(tmp_path / "disk.vdi", "vdi", {0: b"d" * 512})
    (tmp_path / "Snapshots").mkdir()
    child = await make_child(tmp_path / "Snapshots" / "kid.vdi", base, "vdi")
    base.rename(tmp_path / "other-name.vdi")
    chain = open_chain_file(str(child), read_only=True)
    assert await chain.pread(0, 512) == b"d" * 512
    await chain.close()


@pytest.mark.parametrize("fmt", ["vdi", "vmdk"])
async def test_parent_changed_since_the_link(tmp_path: Path, fmt: str) -> None:
    base = await make_image(tmp_path / f"base.{EXT[fmt]}", fmt)
    child = await make_child(tmp_path / f"child.{EXT[fmt]}", base, fmt)
    img = open_image(base)
    await img.pwrite(0, b"changed!" * 64)  # a new modification UUID / CID
    await img.close()
    before = digest(base, child)
    with pytest.raises(MediaError) as err:
        open_chain_file(str(child))
    text = _one_line(err)
    assert "has changed since the link was made" in text and "discard the child" in text
    assert digest(base, child) == before


async def test_vhd_parent_replaced_by_another_image(tmp_path: Path) -> None:
    base = await make_image(tmp_path / "base.vhd", "vhd")
    child = await make_child(tmp_path / "child.vhd", base, "vhd")
    base.unlink()
    await make_image(tmp_path / "base.vhd", "vhd")  # same name, another UUID
    with pytest.raises(MediaError, match="names UUID .* but .* has UUID"):
        open_chain_file(str(child))


async def test_a_cycle_is_refused(tmp_path: Path) -> None:
    root = await make_image(tmp_path / "root.vdi", "vdi")
    b = await make_child(tmp_path / "b.vdi", root, "vdi")
    a = await make_child(tmp_path / "a.vdi", b, "vdi")
    relink(str(b), "vdi", await facts(a))  # b's parent is now its own child
    os.unlink(root)
    before = digest(a, b)
    with pytest.raises(MediaError, match="already in the chain .a cycle."):
        open_chain_file(str(a))
    assert digest(a, b) == before


async def test_raw_parent_found_by_the_comment_hint(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    base = await make_image(tmp_path / "base.img", "raw", {512: b"r" * 512})
    child = await make_child(tmp_path / "d" / "c.vdi", base, "vdi")
    img = open_image(child, read_only=True)
    assert img.info().parent_hint == "../base.img"
    await img.close()
    chain = open_chain_file(str(child), read_only=True)
    assert await chain.pread(512, 512) == b"r" * 512
    await chain.close()
    shutil.move(str(tmp_path / "d"), str(tmp_path / "e"))  # the pair moved together
    (tmp_path / "base.img").rename(tmp_path / "gone.img")
    with pytest.raises(MediaError, match="'../base.img'"):
        open_chain_file(str(tmp_path / "e" / "c.vdi"))
