"""VhdImage behaviour: layout, size convention, bitmaps, footers, diff hook, maintenance."""

from __future__ import annotations

import errno
import struct
import uuid
from pathlib import Path

import pytest

from blockyard.block.formats import vhd_layout as V
from blockyard.block.formats.vhd import VhdImage
from blockyard.block.layer import HOLE, ZERO
from blockyard.block.ram import RamDisk
from blockyard.errors import BlockError, MediaError

from .conftest import concurrent_stress

MiB = 1 << 20
BS = 2 * MiB


def ones_complement(raw: bytes, at: int) -> int:
    """The spec's checksum (§3.1), written independently of vhd_layout."""
    return ~sum(b for i, b in enumerate(raw) if not at <= i < at + 4) & 0xFFFFFFFF


def footer_at(path: Path, offset: int) -> V.Footer:
    footer, why = V.parse_footer(path.read_bytes()[offset:offset + 512])
    assert footer is not None, why
    return footer


def dyn_header(path: Path) -> V.DynHeader:
    header, why = V.parse_dyn_header(path.read_bytes()[512:1536])
    assert header is not None, why
    return header


def bat_entry(path: Path, block: int) -> int:
    return int(struct.unpack_from(">I", path.read_bytes(), 1536 + 4 * block)[0])


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


async def test_create_dynamic_layout(tmp_path: Path) -> None:
    path = tmp_path / "d.vhd"
    img = VhdImage.create(path, 64 * MiB)
    info = img.info()
    await img.close()
    raw = path.read_bytes()
    assert len(raw) == 1536 + 512 + 512 and raw[:512] == raw[-512:]  # §3.3 layout
    assert raw[:8] == b"conectix" and raw[512:520] == b"cxsparse"
    assert struct.unpack_from(">I", raw, 64)[0] == ones_complement(raw[:512], 64)
    assert struct.unpack_from(">I", raw, 512 + 36)[0] == ones_complement(raw[512:1536], 36)
    f, d = footer_at(path, 0), dyn_header(path)
    assert (f.features, f.version, f.data_offset, f.disk_type) == (2, 0x10000, 512, V.DYNAMIC)
    assert (f.creator_app, f.current_size, f.original_size) == (b"blky", 64 * MiB, 64 * MiB)
    assert (d.table_offset, d.max_entries, d.block_size) == (1536, 32, BS)
    assert raw[1536:2048] == b"\xff" * 512
    assert (info.variant, info.virtual_size, info.geometry, info.dirty) == (
        "dynamic", 64 * MiB, (963, 8, 17), False)
    assert info.uuid == str(uuid.UUID(bytes_le=f.unique_id))


async def test_create_fixed_layout(tmp_path: Path) -> None:
    path = tmp_path / "f.vhd"
    img = VhdImage.create(path, 3 * MiB + 100)  # rounded up to a sector
    await img.close()
    path2 = tmp_path / "g.vhd"
    await VhdImage.create(path2, 3 * MiB, variant="fixed").close()
    assert path2.stat().st_size == 3 * MiB + 512
    f = footer_at(path2, 3 * MiB)
    assert (f.disk_type, f.data_offset, f.current_size) == (V.FIXED, V.NO_OFFSET, 3 * MiB)
    assert footer_at(path, path.stat().st_size - 512).current_size == 3 * MiB + 512


@pytest.mark.parametrize(("sectors", "chs"), [
    (64 * MiB // 512, (963, 8, 17)), (20480, (301, 4, 17)),
    (V.MAX_SECTORS, (65535, 16, 255)), (65535 * 16 * 63, (16191, 16, 255)),
    (65535 * 16 * 63 - 1, (65534, 16, 63)),
])
def test_chs_follows_the_spec(sectors: int, chs: tuple[int, int, int]) -> None:
    c, h, s = V.chs(sectors)
    assert (c, h, s) == chs and c * h * s <= sectors


async def test_size_kept_when_not_chs_representable(tmp_path: Path) -> None:
    for size in (64 * MiB, 963 * 8 * 17 * 512):
        path = tmp_path / f"{size}.vhd"
        img = VhdImage.create(path, size)
        c, h, s = img.info().geometry or (0, 0, 0)
        assert img.size == size and c * h * s * 512 <= size
        await img.close()
        assert footer_at(path, 0).current_size == size


async def test_2040_gib_limit(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="2040 GiB"):
        VhdImage.create(tmp_path / "big.vhd", V.MAX_SIZE + 512)
    img = VhdImage.create(tmp_path / "max.vhd", V.MAX_SIZE)
    assert img.size == V.MAX_SIZE and img.dyn and img.dyn.max_entries == V.MAX_SIZE // BS
    with pytest.raises(MediaError, match="2040 GiB"):
        await img.resize(V.MAX_SIZE + 512)
    await img.close()


async def test_bitmap_holds_exactly_the_written_sectors(tmp_path: Path) -> None:
    path = tmp_path / "b.vhd"
    img = VhdImage.create(path, 8 * MiB)
    await img.pwrite(BS + 3 * 512, b"s" * 512)
    await img.pwrite(BS + 9 * 512 + 100, b"xyz")  # unaligned: widened to sector 9
    await img.flush()
    where = bat_entry(path, 1) * 512
    bitmap = path.read_bytes()[where:where + 512]
    assert bitmap[:2] == bytes([0b00010000, 0b01000000]) and not any(bitmap[2:])
    with open(path, "r+b") as f:  # garbage under a clear bit must not show
        f.seek(where + 512 + 5 * 512)
        f.write(b"G" * 512)
    assert await img.pread(BS, 12 * 512) == (bytes(3 * 512) + b"s" * 512 + bytes(5 * 512 + 100)
                                             + b"xyz" + bytes(409 + 1024))
    assert await img.extents(BS, 12 * 512) == [(1536, HOLE | ZERO), (512, 0), (2560, HOLE | ZERO),
                                               (512, 0), (1024, HOLE | ZERO)]
    await img.close()


async def test_allocation_keeps_a_valid_footer_at_eof(tmp_path: Path) -> None:
    path = tmp_path / "e.vhd"
    img = VhdImage.create(path, 16 * MiB)
    for block in (3, 0, 5):
        await img.pwrite(block * BS + 512, b"d" * 4096)
        raw = path.read_bytes()
        assert raw[-512:] == raw[:512]  # the trailing footer is always whole
    assert bat_entry(path, 3) == V.BAT_FREE  # the BAT waits for a flush (§7)
    await img.flush()
    assert [bat_entry(path, b) != V.BAT_FREE for b in (3, 0, 5, 1)] == [True, True, True, False]
    await img.pwrite(7 * BS, b"u" * 512, fua=True)
    assert bat_entry(path, 7) != V.BAT_FREE
    await img.close()


async def test_damaged_trailing_footer_uses_the_copy(tmp_path: Path) -> None:
    path = tmp_path / "t.vhd"
    img = VhdImage.create(path, 8 * MiB)
    await img.pwrite(BS, b"k" * 512)
    await img.close()
    flip(path, path.stat().st_size - 512 + 50)
    before = path.read_bytes()
    img = VhdImage.open(path, read_only=True)
    assert await img.pread(BS, 512) == b"k" * 512
    report = img.check()
    assert any("trailing footer damaged" in e for e in report.errors)
    await img.close()
    assert path.read_bytes() == before  # read-only open and check wrote nothing
    img = VhdImage.open(path)
    report = img.check(repair=True)
    assert report.repaired and not report.errors and img.check().clean
    await img.close()
    raw = path.read_bytes()
    assert raw[:512] == raw[-512:] and len(raw) == len(before)


async def test_damaged_copy_at_zero_is_reported_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "c.vhd"
    await VhdImage.create(path, 8 * MiB).close()
    flip(path, 30)
    img = VhdImage.open(path)
    assert any("copy at offset 0" in e for e in img.check().errors)
    assert img.check(repair=True).repaired and img.check().clean
    await img.close()


async def make_diff(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "child.vhd"
    await VhdImage.create(path, 8 * MiB).close()
    f, d = footer_at(path, 0), dyn_header(path)
    parent_id = uuid.uuid4().bytes
    f.disk_type, d.parent_uuid = V.DIFF, parent_id
    d.parent_name = "base.vhd".encode("utf-16-be").ljust(512, b"\0")
    raw = bytearray(path.read_bytes())
    raw[:512] = raw[-512:] = f.pack()
    raw[512:1536] = d.pack()
    path.write_bytes(bytes(raw))
    return path, parent_id


async def test_diff_reads_the_parent_under_clear_bits(tmp_path: Path) -> None:
    path, parent_id = await make_diff(tmp_path)
    img = VhdImage.open(path)
    info = img.info()
    assert (info.variant, info.parent_hint) == ("diff", "base.vhd")
    assert info.parent_uuid == str(uuid.UUID(bytes_le=parent_id))
    with pytest.raises(BlockError) as exc:
        await img.pread(0, 512)
    assert exc.value.errno == errno.EIO
    parent = RamDisk(8 * MiB)
    await parent.pwrite(0, b"P" * (8 * MiB))
    img.parent = parent
    await img.pwrite(BS + 512, b"c" * 512)  # no copy-up: only sector 1 is ours
    await img.zero(BS + 2048, 1024)  # zeros mask the parent
    assert await img.pread(BS, 4096) == b"P" * 512 + b"c" * 512 + b"P" * 1024 + bytes(
        1024) + b"P" * 1024
    assert (await img.extents(BS, 4096))[:2] == [(512, HOLE), (512, 0)]
    await img.close()
    img = VhdImage.open(path)
    img.parent = parent
    assert await img.pread(BS + 512, 2048) == b"c" * 512 + b"P" * 1024 + bytes(512)
    await img.close()


async def test_trim_and_zero_keep_blocks_and_read_zeros(tmp_path: Path) -> None:
    path = tmp_path / "z.vhd"
    img = VhdImage.create(path, 8 * MiB)
    await img.pwrite(0, b"a" * (2 * BS))
    await img.zero(100 * 512, BS)
    await img.trim(BS + BS // 2, 1000)  # trims whole sectors only
    assert await img.pread(100 * 512, BS) == bytes(BS)
    assert await img.pread(BS + BS // 2, 1024) == bytes(512) + b"a" * 512
    await img.close()


async def test_compact_frees_zero_blocks_and_closes_gaps(tmp_path: Path) -> None:
    path = tmp_path / "k.vhd"
    img = VhdImage.create(path, 16 * MiB)
    for block in range(5):
        await img.pwrite(block * BS, bytes([0x41 + block]) * BS)
    await img.pwrite(BS, bytes(BS))
    await img.pwrite(3 * BS, bytes(BS))
    await img.flush()
    before = path.stat().st_size
    await img.compact()
    assert path.stat().st_size == before - 2 * (BS + 512)
    expected = b"A" * BS + bytes(BS) + b"C" * BS + bytes(BS) + b"E" * BS
    assert await img.pread(0, 5 * BS) == expected and img.check().clean
    await img.close()
    img = VhdImage.open(path, read_only=True)
    assert await img.pread(0, 5 * BS) == expected and img.check().clean
    await img.close()


async def test_unflushed_blocks_after_a_crash_are_leaks(tmp_path: Path) -> None:
    path = tmp_path / "l.vhd"
    img = VhdImage.create(path, 16 * MiB)
    await img.pwrite(0, b"1" * 512)
    await img.flush()
    await img.pwrite(4 * BS, b"2" * 512)  # never flushed
    size = path.stat().st_size
    await img.file.close()  # the process dies: metadata in memory is lost
    img = VhdImage.open(path)
    assert await img.pread(4 * BS, 512) == bytes(512) and await img.pread(0, 512) == b"1" * 512
    report = img.check(repair=True)
    assert report.repaired and img.check().clean
    assert path.stat().st_size == size - (BS + 512)
    await img.close()


async def test_resize_dynamic_grows_the_bat_by_moving_blocks(tmp_path: Path) -> None:
    path = tmp_path / "r.vhd"
    img = VhdImage.create(path, 64 * MiB)  # 32 entries: one BAT sector
    data = {b: bytes([b + 1]) * 4096 for b in (0, 1, 31)}
    for block, d in data.items():
        await img.pwrite(block * BS, d)
    await img.resize(1024 * MiB)  # 512 entries: blocks 0 and 1 sit where the BAT grows
    await img.pwrite(1024 * MiB - 512, b"z" * 512)
    await img.close()
    assert dyn_header(path).max_entries == 512
    img = VhdImage.open(path, read_only=True)
    assert img.size == 1024 * MiB and img.check().clean
    for block, d in data.items():
        assert await img.pread(block * BS, 4096) == d
    assert await img.pread(1024 * MiB - 512, 512) == b"z" * 512
    assert await img.pread(64 * MiB, 4096) == bytes(4096)
    await img.close()


async def test_resize_shrink_needs_force(tmp_path: Path) -> None:
    for variant in ("dynamic", "fixed"):
        path = tmp_path / f"s-{variant}.vhd"
        img = VhdImage.create(path, 16 * MiB, variant=variant)
        await img.pwrite(12 * MiB, b"q" * 512)
        with pytest.raises(MediaError, match="use force"):
            await img.resize(8 * MiB)
        await img.resize(12 * MiB + 512, force=True)
        await img.resize(20 * MiB)
        assert await img.pread(12 * MiB, 1024) == b"q" * 512 + bytes(512)
        assert await img.pread(12 * MiB + 1024, 8 * MiB - 1024) == bytes(8 * MiB - 1024)
        await img.close()
        img = VhdImage.open(path, read_only=True)
        assert img.size == 20 * MiB and img.check().clean
        await img.close()


def test_probe() -> None:
    assert VhdImage.probe(b"conectix" + bytes(504), 1 << 30)
    fixed = bytes(4096) + b"conectix" + bytes(504)
    assert VhdImage.probe(fixed, len(fixed))  # the whole file is in view
    assert not VhdImage.probe(fixed[:4096], 1 << 30) and not VhdImage.probe(b"", 0)


@pytest.mark.parametrize(("kw", "message"), [
    ({"variant": "split2g"}, "no variant"), ({"block_size": 1000}, "power of two"),
    ({"parent": "x"}, "unknown VHD option"),
])
def test_create_refuses_bad_requests(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(MediaError, match=message):
        VhdImage.create(tmp_path / "x.vhd", MiB, **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "x.vhd").exists()


@pytest.mark.parametrize("seed", [1, 2])
async def test_concurrent_io_while_blocks_move(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "s.vhd"
    img = VhdImage.create(path, 8 * MiB, block_size=256 << 10)  # block writes use the I/O pool
    await concurrent_stress(img, tasks=8, ops=150, seed=seed)
    await img.close()
    img = VhdImage.open(path, read_only=True)
    assert img.check().clean
    await img.close()
