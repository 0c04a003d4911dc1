"""VmdkImage: variants, descriptor upkeep, sparse allocation order, zero/trim, children."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from blockyard.block.formats import create_image, open_image, probe
from blockyard.block.formats import vmdk_descriptor as vd
from blockyard.block.formats.vmdk import VmdkImage
from blockyard.block.formats.vmdk_layout import load_tables, parse_header
from blockyard.block.formats.vmdk_sparse import SparseExtent
from blockyard.block.layer import HOLE, ZERO
from blockyard.block.ram import RamDisk
from blockyard.errors import BlockError

MiB = 1 << 20
G = 64 << 10  # default grain
VARIANTS = ["dynamic", "fixed", "split2g", "split2g-fixed"]
SMALL_SPLIT = {"extent_size": MiB}


def opts_for(variant: str) -> dict[str, object]:
    return dict(SMALL_SPLIT) if variant.startswith("split") else {}


def on_disk_tables(path: Path):  # noqa: ANN201 - test helper
    fd = os.open(path, os.O_RDONLY)
    try:
        h = parse_header(os.pread(fd, 512, 0), str(path))
        return h, load_tables(fd, h, os.fstat(fd).st_size, str(path))
    finally:
        os.close(fd)


def sparse(img: VmdkImage, k: int = 0) -> SparseExtent:
    e = img.extents_[k]
    assert isinstance(e, SparseExtent)
    return e


@pytest.mark.parametrize("variant", VARIANTS)
async def test_variant_round_trip(tmp_path: Path, variant: str) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, 3 * MiB, "vmdk", variant, **opts_for(variant))
    assert probe(p) == "vmdk"
    model = bytearray(3 * MiB)
    for off, n, byte in [(0, 1, 1), (G - 3, 7, 2), (MiB - 100, 300, 3), (2 * MiB + 5, G, 4),
                         (3 * MiB - 512, 512, 5)]:
        await img.pwrite(off, bytes([byte]) * n)
        model[off:off + n] = bytes([byte]) * n
    await img.close()
    img = open_image(p)
    assert isinstance(img, VmdkImage) and img.size == 3 * MiB
    assert bytes(await img.pread(0, img.size)) == model
    info = img.info()
    assert info.variant == variant and info.uuid and info.format == "vmdk"
    assert not info.dirty and img.check().clean
    await img.close()


async def test_first_write_changes_cid_once_read_only_open_changes_nothing(tmp_path: Path) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, MiB, "vmdk")
    cid0, mod0 = img.info().extra["cid"], img.info().modification_uuid
    await img.pwrite(0, b"a")
    cid1, mod1 = img.info().extra["cid"], img.info().modification_uuid
    await img.pwrite(G, b"b")
    assert cid1 != cid0 and mod1 != mod0 and img.info().extra["cid"] == cid1
    await img.close()
    before = p.read_bytes()
    img = open_image(p, read_only=True)
    assert img.info().extra["cid"] == cid1
    await img.pread(0, MiB)
    await img.close()
    img = open_image(p)  # read-write open, reads only: still no write
    await img.pread(0, MiB)
    await img.extents(0, MiB)
    await img.close()
    assert p.read_bytes() == before


async def test_unclean_flag_set_by_first_write_cleared_on_close(tmp_path: Path) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, MiB, "vmdk")
    assert p.read_bytes()[72] == 0
    await img.pwrite(0, b"x" * 10)
    assert p.read_bytes()[72] == 1
    reader = open_image(p, read_only=True)
    assert reader.info().dirty
    await reader.close()
    await img.close()
    assert p.read_bytes()[72] == 0


async def test_allocation_published_only_by_flush(tmp_path: Path) -> None:
    """§7: the grain is written before its GTE; the GTE reaches the file at flush."""
    p = tmp_path / "d.vmdk"
    img = create_image(p, 4 * MiB, "vmdk")
    await img.pwrite(2 * G + 100, b"data")
    e = sparse(img)
    v = e.gte(2)
    assert v > 1 and os.pread(e.raw.fd, 4, v * 512 + 100) == b"data"  # type: ignore[union-attr]
    _h, disk = on_disk_tables(p)
    assert disk.gts[0][2] == 0  # not yet published
    await img.flush()
    _h, disk = on_disk_tables(p)
    assert disk.gts[0][2] == v
    await img.pwrite(3 * G, b"fua", fua=True)
    _h, disk = on_disk_tables(p)
    assert disk.gts[0][3] == e.gte(3)
    await img.close()


async def test_redundant_tables_kept_in_step(tmp_path: Path) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, 70 * MiB, "vmdk", lazy_tables=True)
    for off in (0, 5 * G, 33 * MiB, 69 * MiB):
        await img.pwrite(off, b"z" * 1000)
    await img.close()
    h, t = on_disk_tables(p)
    assert t.rgd is not None and t.rgt_ok
    fd = os.open(p, os.O_RDONLY)
    for i, sector in enumerate(t.gd):
        assert bool(sector) == bool(t.rgd[i])
        if sector:
            gt = os.pread(fd, h.gt_sectors * 512, sector * 512)
            assert gt == os.pread(fd, h.gt_sectors * 512, t.rgd[i] * 512)
    os.close(fd)
    assert sum(1 for s in t.gd if s) == 3  # lazily allocated: GTs 0, 1 and 2


async def test_zeroed_grain_gte_used_for_whole_grain_zero(tmp_path: Path) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, MiB, "vmdk", zeroed_grain=True)
    await img.pwrite(0, b"\x55" * (3 * G))
    await img.zero(G, G)  # whole grain
    await img.trim(2 * G + 10, 100)  # partial: zeros inside the grain
    e = sparse(img)
    assert e.gte(1) == 1 and e.gte(0) > 1 and e.gte(2) > 1
    assert await img.extents(0, 3 * G) == [(G, 0), (G, ZERO), (G, 0)]
    data = bytes(await img.pread(0, 3 * G))
    assert data[:G] == b"\x55" * G and data[G:2 * G] == bytes(G)
    assert data[2 * G + 10:2 * G + 110] == bytes(100) and data[2 * G + 110] == 0x55
    await img.pwrite(G + 7, b"!")  # partial write into a zeroed grain: the rest stays zero
    assert bytes(await img.pread(G, G)) == bytes(7) + b"!" + bytes(G - 8)
    await img.close()
    h, _t = on_disk_tables(p)
    assert h.version == 2 and h.zero_grain


async def test_whole_grain_zero_unmaps_in_base_image(tmp_path: Path) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, MiB, "vmdk")
    await img.pwrite(0, b"\x11" * (2 * G))
    await img.flush()
    await img.zero(0, G)
    assert sparse(img).gte(0) == 0
    assert (await img.extents(0, 2 * G))[0] == (G, HOLE | ZERO)
    size = p.stat().st_size
    await img.flush()  # the GTE 0 is on disk: the grain may be reused now
    await img.pwrite(4 * G, b"\x22" * G)
    assert p.stat().st_size == size
    await img.close()
    img = open_image(p)
    assert bytes(await img.pread(0, G)) == bytes(G)
    assert bytes(await img.pread(4 * G, G)) == b"\x22" * G
    assert img.check().clean
    await img.close()


async def test_concurrent_writes_into_one_unallocated_grain(tmp_path: Path) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, MiB, "vmdk")
    pieces = [(i * 4096, bytes([i + 1]) * 4096) for i in range(16)]
    await asyncio.gather(*(img.pwrite(off, d) for off, d in pieces))
    assert bytes(await img.pread(0, G)) == b"".join(d for _o, d in pieces)
    await img.close()
    assert p.stat().st_size == sparse(open_image(p)).h.overhead * 512 + G  # one grain only


async def make_child(tmp_path: Path, zeroed: bool = False) -> Path:
    """A sparse VMDK whose descriptor names a parent (§2.5)."""
    p = tmp_path / "child.vmdk"
    img = create_image(p, MiB, "vmdk", zeroed_grain=zeroed)
    assert isinstance(img, VmdkImage)
    img.desc.parent_cid = 0x12345678
    img.desc.parent_hint = "base.vmdk"
    await img.write_descriptor()
    await img.close()
    return p


async def test_child_reads_parent_or_raises_without_one(tmp_path: Path) -> None:
    p = await make_child(tmp_path)
    child = open_image(p)
    assert isinstance(child, VmdkImage)
    info = child.info()
    assert info.variant == "diff" and info.parent_hint == "base.vmdk"
    with pytest.raises(BlockError) as exc:
        await child.pread(0, 512)
    assert exc.value.errno == errno.EIO and "no parent" in str(exc.value)
    assert await child.extents(0, MiB) == [(MiB, HOLE)]  # unallocated, not known zero
    parent = RamDisk(MiB)
    await parent.pwrite(0, b"P" * MiB)
    child.parent = parent
    assert bytes(await child.pread(100, 10)) == b"P" * 10
    await child.pwrite(G + 10, b"c")  # copy-up: rest of the grain from the parent
    await child.zero(2 * G, G)  # must mask the parent: a grain of zeros
    data = bytes(await child.pread(G, 2 * G))
    assert data[:10] == b"P" * 10 and data[10:11] == b"c" and data[11:G] == b"P" * (G - 11)
    assert data[G:] == bytes(G)
    await child.close()
    child = open_image(p)
    child.parent = parent
    assert bytes(await child.pread(G, 2 * G)) == data
    await child.close()


async def test_child_zeroed_grain_masks_parent(tmp_path: Path) -> None:
    p = await make_child(tmp_path, zeroed=True)
    child = open_image(p)
    assert isinstance(child, VmdkImage)
    parent = RamDisk(MiB)
    await parent.pwrite(0, b"P" * MiB)
    child.parent = parent
    await child.trim(0, G)
    assert sparse(child).gte(0) == 1 and bytes(await child.pread(0, G)) == bytes(G)
    assert (await child.extents(0, 2 * G)) == [(G, ZERO), (G, HOLE)]
    await child.close()


async def test_split_at_2047_mib(tmp_path: Path) -> None:
    p = tmp_path / "big.vmdk"
    size = 2100 * MiB
    img = create_image(p, size, "vmdk", "split2g")
    assert isinstance(img, VmdkImage)
    assert [x.sectors for x in img.desc.extents] == [4192256, size // 512 - 4192256]
    edge = 2047 * MiB
    await img.pwrite(edge - 3000, b"\xee" * 6000)
    await img.pwrite(size - 1, b"\x01")
    await img.close()
    img = open_image(p)
    assert bytes(await img.pread(edge - 3000, 6000)) == b"\xee" * 6000
    assert bytes(await img.pread(size - 2, 2)) == b"\x00\x01"
    assert img.info().variant == "split2g" and img.check().clean
    await img.close()
    assert (tmp_path / "big-s002.vmdk").exists()


async def test_stream_written_once_then_read_only(tmp_path: Path) -> None:
    p = tmp_path / "s.vmdk"
    img = create_image(p, MiB + 4096, "vmdk", "stream")
    await img.pwrite(3 * G, b"\x03" * G)  # out of order is fine
    await img.pwrite(0, b"\x01" * 1000)  # partial: waits in memory
    await img.pwrite(1000, b"\x02" * (G - 1000))  # completes grain 0
    await img.zero(5 * G, G)  # whole grain of zeros: left out
    await img.pwrite(MiB, b"\x04" * 4096)  # the short last grain
    assert bytes(await img.pread(0, 2)) == b"\x01\x01"
    with pytest.raises(BlockError) as exc:
        await img.pwrite(3 * G + 5, b"again")
    assert exc.value.errno == errno.EPERM
    await img.close()
    img = open_image(p)  # asked read-write: a stream opens read-only
    assert img.read_only and img.info().variant == "stream" and img.info().extra["compressed"]
    with pytest.raises(BlockError):
        await img.pwrite(0, b"x")
    data = bytes(await img.pread(0, img.size))
    assert data[:1000] == b"\x01" * 1000 and data[1000:G] == b"\x02" * (G - 1000)
    assert data[3 * G:4 * G] == b"\x03" * G and data[MiB:] == b"\x04" * 4096
    assert data.count(0) == len(data) - 1000 - (G - 1000) - G - 4096
    assert img.check().clean
    await img.close()


async def test_check_repairs_redundant_table_and_leaked_tail(tmp_path: Path) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, MiB, "vmdk")
    await img.pwrite(0, b"x" * 100)
    await img.close()
    h, t = on_disk_tables(p)
    assert t.rgd is not None
    with open(p, "r+b") as f:
        f.seek(t.rgd[0] * 512)
        f.write(b"\x99\x99\x99\x00")  # redundant GT entry 0 differs
        f.seek(0, os.SEEK_END)
        f.write(b"\x00" * (3 * G))  # a leaked tail
    img = open_image(p)
    report = img.check()
    assert any("redundant grain table 0" in e for e in report.errors)
    assert any("end of the file" in x for x in report.leaks)
    fixed = img.check(repair=True)
    assert len(fixed.repaired) == 2
    assert img.check().clean
    assert bytes(await img.pread(0, 100)) == b"x" * 100
    await img.close()


async def test_check_repair_clears_unclean_flag(tmp_path: Path) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, MiB, "vmdk")
    await img.close()
    with open(p, "r+b") as f:
        f.seek(72)
        f.write(b"\x01")
    img = open_image(p)
    assert img.info().dirty
    assert "unclean" in img.check(repair=True).repaired[0]
    assert not img.info().dirty and p.read_bytes()[72] == 0
    await img.close()


async def test_compact_drops_zero_grains_and_shrinks_file(tmp_path: Path) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, 2 * MiB, "vmdk")
    await img.pwrite(0, b"\x01" * (2 * MiB))
    await img.pwrite(0, bytes(MiB))  # zeros written as data: still allocated
    await img.close()
    size_before = p.stat().st_size
    img = open_image(p)
    freed = await img.compact()
    assert freed > 0
    assert bytes(await img.pread(0, 2 * MiB)) == bytes(MiB) + b"\x01" * MiB
    await img.close()
    assert p.stat().st_size <= size_before - MiB
    img = open_image(p)
    assert img.check().clean and bytes(await img.pread(MiB, MiB)) == b"\x01" * MiB
    await img.close()


@pytest.mark.parametrize("variant", VARIANTS)
async def test_resize_grow_and_guarded_shrink(tmp_path: Path, variant: str) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, 2 * MiB, "vmdk", variant, **opts_for(variant))
    await img.pwrite(2 * MiB - 10, b"end!......")
    await img.resize(5 * MiB + 512)
    assert img.size == 5 * MiB + 512
    await img.pwrite(5 * MiB, b"new")
    await img.close()
    img = open_image(p)
    assert img.size == 5 * MiB + 512 and bytes(await img.pread(5 * MiB, 3)) == b"new"
    assert bytes(await img.pread(2 * MiB - 10, 4)) == b"end!"
    with pytest.raises(Exception, match="past the new size"):
        await img.resize(MiB)
    await img.resize(MiB, force=True)
    assert img.size == MiB
    await img.close()
    img = open_image(p)
    assert img.size == MiB and not img.check().errors
    assert isinstance(img, VmdkImage) and img.desc.geometry() is not None
    await img.close()


async def test_bare_extent_file_opens(tmp_path: Path) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, 2 * MiB, "vmdk", "split2g", **SMALL_SPLIT)
    await img.pwrite(MiB + 5, b"second")
    await img.close()
    bare = open_image(tmp_path / "d-s002.vmdk", read_only=True)
    assert isinstance(bare, VmdkImage) and bare.size == MiB
    assert bytes(await bare.pread(5, 6)) == b"second"
    await bare.close()


async def test_descriptor_rewrite_keeps_foreign_keys(tmp_path: Path) -> None:
    p = tmp_path / "d.vmdk"
    img = create_image(p, MiB, "vmdk", "fixed")
    await img.close()
    text = p.read_text().replace("#DDB\n", '#DDB\nddb.toolsVersion = "10304"\n')
    p.write_text(text.replace("version=1\n", 'version=1\nencoding="UTF-8"\n'))
    img = open_image(p)
    await img.pwrite(0, b"x")
    await img.close()
    d = vd.parse(p.read_text(), str(p))
    assert d.ddb["ddb.toolsVersion"] == "10304" and d.other["encoding"] == '"UTF-8"'


async def test_huge_sparse_disk_extents_are_cheap(tmp_path: Path) -> None:
    p = tmp_path / "huge.vmdk"
    size = 1 << 40
    img = create_image(p, size, "vmdk", lazy_tables=True)
    assert await img.extents(0, size) == [(size, HOLE | ZERO)]  # absent GTs: one step each
    await img.pwrite(size - G, b"\x01" * G)
    assert await img.extents(size - 2 * G, 2 * G) == [(G, HOLE | ZERO), (G, 0)]
    part = await img.extents(size - (1 << 32), 1 << 32)  # 65536 grains of one GT range...
    assert 0 < sum(e.length for e in part) <= 1 << 32  # ...may come back shorter: allowed
    await img.close()
    assert p.stat().st_size < 2 * MiB
