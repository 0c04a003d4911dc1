"""VdiImage behaviour: layout on create, allocation, markers, diff hook, recovery, maintenance."""

from __future__ import annotations

import asyncio
import errno
import os
import struct
import uuid
from pathlib import Path

import pytest

from blockyard.block.formats import vdi_layout as L
from blockyard.block.formats.vdi import VdiImage
from blockyard.block.layer import HOLE, ZERO
from blockyard.block.ram import RamDisk
from blockyard.errors import BlockError, MediaError

from .conftest import concurrent_stress

MiB = 1 << 20


def header(path: Path) -> L.VdiHeader:
    return L.parse_header(path.read_bytes()[:0x1D8], str(path))


def disk_map(path: Path) -> list[int]:
    h = header(path)
    raw = path.read_bytes()[h.offset_blocks:h.offset_blocks + 4 * h.blocks_total]
    return list(struct.unpack(f"<{h.blocks_total}I", raw))


def rewrite_header(path: Path, **changes: object) -> None:
    h = header(path)
    for key, value in changes.items():
        setattr(h, key, value)
    fd = os.open(path, os.O_RDWR)
    try:
        L.write_header(fd, h)
    finally:
        os.close(fd)


async def test_create_writes_the_virtualbox_layout(tmp_path: Path) -> None:
    path = tmp_path / "d.vdi"
    img = VdiImage.create(path, 10 * MiB)
    info = img.info()
    await img.close()
    raw = path.read_bytes()
    assert raw[0x40:0x48] == bytes.fromhex("7f10dabe01000100")  # §1.1 signature, version 1.1
    h = header(path)
    assert (h.header_size, h.image_type, h.offset_blocks, h.offset_data) == (
        0x190, L.TYPE_NORMAL, 1 * MiB, 2 * MiB)  # §1.3: VirtualBox aligns to 1 MiB
    assert (h.block_size, h.blocks_total, h.blocks_allocated) == (MiB, 10, 0)
    assert struct.unpack_from("<I", raw, 0x168)[0] == 512
    assert h.lchs == {"cylinders": 0, "heads": 0, "sectors": 0, "sector_size": 512}
    assert len(raw) == 2 * MiB and disk_map(path) == [L.BLOCK_FREE] * 10
    assert info.uuid == str(uuid.UUID(bytes_le=raw[0x188:0x198]))  # GUID byte order
    assert info.modification_uuid == str(uuid.UUID(bytes_le=raw[0x198:0x1A8]))
    assert (info.format, info.variant, info.virtual_size, info.dirty) == (
        "vdi", "dynamic", 10 * MiB, False)


async def test_fixed_maps_every_block_to_its_slot(tmp_path: Path) -> None:
    path = tmp_path / "f.vdi"
    img = VdiImage.create(path, 3 * MiB + 512, variant="fixed")
    await img.pwrite(3 * MiB, b"x" * 512)
    await img.zero(0, MiB)
    await img.close()
    h = header(path)
    assert h.image_type == L.TYPE_FIXED and h.blocks_allocated == 4
    assert disk_map(path) == [0, 1, 2, 3]
    assert path.stat().st_size == h.offset_data + 4 * MiB
    img = VdiImage.open(path, read_only=True)
    assert img.info().variant == "fixed" and await img.pread(3 * MiB, 512) == b"x" * 512
    await img.close()


@pytest.mark.parametrize("block_size", [512, 4096, 64 << 10, MiB, 4 * MiB])
async def test_other_block_sizes_round_trip(tmp_path: Path, block_size: int) -> None:
    path = tmp_path / "b.vdi"
    size = 3 * block_size + 1024
    img = VdiImage.create(path, size, block_size=block_size)
    data = os.urandom(block_size + 700)
    await img.pwrite(block_size // 2 - 100, data)
    await img.pwrite(size - 512, b"\xee" * 512)
    await img.close()
    img = VdiImage.open(path)
    assert img.block_size == block_size
    assert await img.pread(block_size // 2 - 100, len(data)) == data
    assert await img.pread(size - 512, 512) == b"\xee" * 512
    assert img.check().clean
    await img.close()


async def test_a_0x180_header_stays_0x180(tmp_path: Path) -> None:
    path = tmp_path / "q.vdi"
    await VdiImage.create(path, 4 * MiB).close()
    rewrite_header(path, header_size=0x180, lchs=None)
    with open(path, "r+b") as f:  # qemu leaves the LCHS area zero
        f.seek(0x1C8)
        f.write(bytes(16))
    img = VdiImage.open(path)
    assert img.h.lchs is None
    await img.pwrite(MiB, b"a" * 4096)
    await img.close()
    assert header(path).header_size == 0x180
    assert path.read_bytes()[0x1C8:0x1D8] == bytes(16)
    img = VdiImage.open(path, read_only=True)
    assert await img.pread(MiB, 4096) == b"a" * 4096
    await img.close()


async def test_partial_write_allocates_the_whole_block_once(tmp_path: Path) -> None:
    path = tmp_path / "p.vdi"
    img = VdiImage.create(path, 8 * MiB)
    before = path.stat().st_size
    await img.pwrite(3 * MiB + 4096, b"\x01" * 4096)
    assert path.stat().st_size == before + MiB  # one whole block appended
    await img.pwrite(3 * MiB + 8192, b"\x02" * 4096)
    assert path.stat().st_size == before + MiB  # same block: no second allocation
    block = await img.pread(3 * MiB, MiB)
    assert block == bytes(4096) + b"\x01" * 4096 + b"\x02" * 4096 + bytes(MiB - 12288)
    await img.close()


async def test_fill_hook_supplies_the_rest_of_a_new_block(tmp_path: Path) -> None:
    class Filled(VdiImage):
        async def _fill_for_partial(self, block_index: int) -> bytes:
            return bytes([block_index]) * self.block_size

    path = tmp_path / "h.vdi"
    await VdiImage.create(path, 4 * MiB).close()
    img = Filled.open(path)
    await img.pwrite(2 * MiB + 10, b"zz")
    assert await img.pread(2 * MiB, 16) == b"\x02" * 10 + b"zz" + b"\x02" * 4
    await img.close()


async def test_concurrent_writes_into_one_new_block(tmp_path: Path) -> None:
    path = tmp_path / "c.vdi"
    img = VdiImage.create(path, 4 * MiB)
    chunks = [(i * 4096, bytes([i + 1]) * 4096) for i in range(64)]
    await asyncio.gather(*(img.pwrite(MiB + off, d) for off, d in chunks))
    assert await img.pread(MiB, 64 * 4096) == b"".join(d for _o, d in chunks)
    await img.close()
    assert header(path).blocks_allocated == 1


async def test_whole_block_zero_and_trim_set_the_zero_marker(tmp_path: Path) -> None:
    path = tmp_path / "z.vdi"
    img = VdiImage.create(path, 6 * MiB)
    for block in range(4):
        await img.pwrite(block * MiB, bytes([block + 1]) * MiB)
    await img.flush()
    await img.zero(1 * MiB, MiB)
    await img.trim(2 * MiB, MiB)
    await img.zero(3 * MiB + 4096, 4096)  # partial: writes zeros, stays allocated
    assert [img.bmap[b] for b in (1, 2)] == [L.BLOCK_ZERO, L.BLOCK_ZERO]
    assert await img.pread(MiB, 2 * MiB) == bytes(2 * MiB)
    assert await img.extents(0, 6 * MiB) == [(MiB, 0), (2 * MiB, HOLE | ZERO), (MiB, 0),
                                             (2 * MiB, HOLE | ZERO)]
    await img.flush()
    on_disk = disk_map(path)
    assert on_disk[1:3] == [L.BLOCK_ZERO, L.BLOCK_ZERO]
    live = sorted(s for s in on_disk if s < L.BLOCK_ZERO)
    assert live == [0, 1] and header(path).blocks_allocated == 2  # dense: freed slots moved
    assert path.stat().st_size == header(path).offset_data + 2 * MiB
    expected = b"\x01" * MiB + bytes(2 * MiB) + b"\x04" * 4096 + bytes(4096) + b"\x04" * (
        MiB - 8192)
    assert await img.pread(0, 4 * MiB) == expected
    await img.close()
    img = VdiImage.open(path, read_only=True)
    assert await img.pread(0, 4 * MiB) == expected and img.check().clean
    await img.close()


async def test_freed_slot_is_reused_only_after_it_is_published(tmp_path: Path) -> None:
    path = tmp_path / "r.vdi"
    img = VdiImage.create(path, 8 * MiB)
    await img.pwrite(0, b"a" * MiB)
    await img.pwrite(MiB, b"b" * MiB)
    await img.flush()
    await img.trim(0, MiB)
    await img.pwrite(5 * MiB, b"c" * 512)
    assert img.bmap[5] == 2  # slot 0 is still named by the map on disk: not reused yet
    await img.flush()
    assert sorted(s for s in img.bmap if s < L.BLOCK_ZERO) == [0, 1]
    await img.close()
    img = VdiImage.open(path, read_only=True)
    assert await img.pread(MiB, MiB) == b"b" * MiB
    assert await img.pread(5 * MiB, 1024) == b"c" * 512 + bytes(512)
    assert not img.dirty and img.check().clean
    await img.close()


async def test_flush_moves_a_bounded_number_of_blocks(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from blockyard.block.formats import vdi

    monkeypatch.setattr(vdi, "MOVES_PER_FLUSH", 1)
    path = tmp_path / "n.vdi"
    img = VdiImage.create(path, 8 * MiB)
    for block in range(6):
        await img.pwrite(block * MiB, bytes([block + 1]) * MiB)
    await img.flush()
    await img.trim(0, 3 * MiB)  # slots 0..2 freed
    await img.flush()
    assert sorted(s for s in disk_map(path) if s < L.BLOCK_ZERO) == [0, 3, 4]  # one move
    await img.pwrite(7 * MiB, b"\x08" * MiB)  # reuses a freed slot, the file does not grow
    assert img.bmap[7] == 1 and path.stat().st_size == header(path).offset_data + 5 * MiB
    await img.close()  # the final publish moves everything
    entries = disk_map(path)
    assert sorted(s for s in entries if s < L.BLOCK_ZERO) == [0, 1, 2, 3]
    img = VdiImage.open(path, read_only=True)
    assert not img.dirty and img.check().clean
    assert await img.pread(3 * MiB, 3 * MiB) == b"\x04" * MiB + b"\x05" * MiB + b"\x06" * MiB
    assert await img.pread(7 * MiB, MiB) == b"\x08" * MiB
    await img.close()


async def test_fua_allocation_reaches_the_map_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "u.vdi"
    img = VdiImage.create(path, 4 * MiB)
    await img.pwrite(2 * MiB, b"f" * 512, fua=True)
    assert disk_map(path)[2] == 0 and header(path).blocks_allocated == 1
    await img.pwrite(MiB, b"g" * 512)
    assert disk_map(path)[1] == L.BLOCK_FREE  # not published before a flush
    await img.close()


async def test_modification_uuid_renewed_once_per_session(tmp_path: Path) -> None:
    path = tmp_path / "m.vdi"
    img = VdiImage.create(path, 4 * MiB)
    first = header(path).uuid_modification
    await img.pwrite(0, b"x")
    await img.flush()
    second = header(path).uuid_modification
    await img.pwrite(MiB, b"y")
    await img.flush()
    assert first != second == header(path).uuid_modification
    await img.close()


async def make_diff(tmp_path: Path) -> tuple[Path, uuid.UUID]:
    path = tmp_path / "child.vdi"
    await VdiImage.create(path, 4 * MiB).close()
    link = uuid.uuid4()
    rewrite_header(path, image_type=L.TYPE_DIFF, uuid_link=link,
                   uuid_parent_modification=uuid.uuid4())
    return path, link


async def test_diff_image_needs_a_parent_for_free_blocks(tmp_path: Path) -> None:
    path, link = await make_diff(tmp_path)
    img = VdiImage.open(path)
    info = img.info()
    assert (info.variant, info.parent_uuid) == ("diff", str(link))
    with pytest.raises(BlockError) as exc:
        await img.pread(0, 512)
    assert exc.value.errno == errno.EIO
    await img.close()


async def test_diff_image_reads_and_copies_up_from_the_parent(tmp_path: Path) -> None:
    path, _link = await make_diff(tmp_path)
    parent = RamDisk(4 * MiB)
    await parent.pwrite(0, b"P" * (4 * MiB))
    img = VdiImage.open(path)
    img.parent = parent
    assert await img.pread(MiB - 2, 4) == b"PPPP"
    await img.pwrite(MiB + 100, b"c" * 10)  # partial write: the rest of the block from the parent
    assert await img.pread(MiB + 96, 18) == b"PPPP" + b"c" * 10 + b"PPPP"
    await img.zero(2 * MiB, MiB)  # whole block: the zero marker masks the parent
    assert img.bmap[2] == L.BLOCK_ZERO and await img.pread(2 * MiB, 8) == bytes(8)
    assert await img.extents(0, 4 * MiB) == [(MiB, HOLE), (MiB, 0), (MiB, HOLE | ZERO),
                                             (MiB, HOLE)]
    await img.close()
    img = VdiImage.open(path)
    img.parent = parent
    assert await img.pread(MiB, MiB) == b"P" * 100 + b"c" * 10 + b"P" * (MiB - 110)
    await img.close()


async def written(tmp_path: Path, blocks: int = 3) -> Path:
    path = tmp_path / "w.vdi"
    img = VdiImage.create(path, 8 * MiB)
    for block in range(blocks):
        await img.pwrite(block * 2 * MiB, bytes([0x30 + block]) * MiB)
    await img.close()
    return path


async def test_tail_past_the_last_slot_is_an_unclean_trace(tmp_path: Path) -> None:
    path = await written(tmp_path)
    with open(path, "ab") as f:  # an allocation that never reached the map
        f.write(b"\x99" * MiB)
    img = VdiImage.open(path, read_only=True)
    report = img.check()
    assert img.info().dirty and report.leaks and not report.errors
    await img.close()
    img = VdiImage.open(path)  # read-write open repairs it
    assert img.info().dirty and img.check().clean
    assert path.stat().st_size == header(path).offset_data + 3 * MiB
    assert await img.pread(4 * MiB, MiB) == b"\x32" * MiB
    await img.close()


async def test_counter_ahead_of_the_map_is_repaired(tmp_path: Path) -> None:
    path = await written(tmp_path)
    rewrite_header(path, blocks_allocated=4)
    with open(path, "ab") as f:
        f.write(bytes(MiB))
    img = VdiImage.open(path, read_only=True)
    report = img.check(repair=True)
    assert any("counter is 4" in e for e in report.errors)
    assert "opened read-only: nothing repaired" in report.errors
    await img.close()
    img = VdiImage.open(path)
    assert img.dirty and img.check().clean and header(path).blocks_allocated == 3
    await img.close()


async def test_unused_slot_in_the_middle_is_filled_on_open(tmp_path: Path) -> None:
    path = await written(tmp_path)
    entries = disk_map(path)
    entries[0] = L.BLOCK_FREE  # slot 0 now unused: as after a crash mid-discard
    h = header(path)
    with open(path, "r+b") as f:
        f.seek(h.offset_blocks)
        f.write(struct.pack(f"<{len(entries)}I", *entries))
    rewrite_header(path, blocks_allocated=3)
    img = VdiImage.open(path)
    assert img.dirty
    assert sorted(s for s in disk_map(path) if s < L.BLOCK_ZERO) == [0, 1]
    assert await img.pread(2 * MiB, MiB) == b"\x31" * MiB
    assert await img.pread(4 * MiB, MiB) == b"\x32" * MiB
    assert await img.pread(0, MiB) == bytes(MiB) and img.check().clean
    await img.close()


async def test_compact_frees_blocks_that_read_as_zeros(tmp_path: Path) -> None:
    path = await written(tmp_path, blocks=4)
    img = VdiImage.open(path)
    await img.pwrite(0, bytes(MiB))  # zeros written in place: the block stays allocated
    await img.pwrite(4 * MiB, bytes(MiB))
    before = path.stat().st_size
    await img.compact()
    assert path.stat().st_size == before - 2 * MiB
    assert await img.pread(2 * MiB, MiB) == b"\x31" * MiB
    assert await img.pread(6 * MiB, MiB) == b"\x33" * MiB
    assert await img.pread(0, MiB) == bytes(MiB) and img.check().clean
    await img.close()


async def test_resize_grow_and_shrink(tmp_path: Path) -> None:
    path = await written(tmp_path)
    img = VdiImage.open(path)
    await img.resize(12 * MiB)
    assert img.size == 12 * MiB and await img.pread(8 * MiB, 4 * MiB) == bytes(4 * MiB)
    await img.pwrite(12 * MiB - 512, b"e" * 512)
    with pytest.raises(MediaError, match="use force"):
        await img.resize(3 * MiB)
    await img.resize(4 * MiB + 512, force=True)  # keeps blocks 0..4, zeroes past the end
    await img.resize(6 * MiB)
    assert await img.pread(4 * MiB, 2 * MiB) == b"\x32" * 512 + bytes(2 * MiB - 512)
    await img.close()
    img = VdiImage.open(path, read_only=True)
    assert img.size == 6 * MiB and img.check().clean
    assert await img.pread(2 * MiB, MiB) == b"\x31" * MiB
    await img.close()


async def test_resize_moves_a_packed_map_out_of_the_way(tmp_path: Path) -> None:
    path = tmp_path / "packed.vdi"  # qemu's packed layout: map at 0x200, data right after it
    h = L.new_header(64 * MiB, MiB, fixed=False, align=512)
    path.write_bytes(h.pack().ljust(h.offset_blocks, b"\0") + b"\xff" * 4 * 64)
    os.truncate(path, h.offset_data)
    img = VdiImage.open(path)
    data = [os.urandom(4096) for _ in range(3)]
    for i, d in enumerate(data):
        await img.pwrite(i * 30 * MiB, d)
    await img.resize(1024 * MiB)  # 1024 entries do not fit in the 512-byte map area
    await img.pwrite(1000 * MiB, b"n" * 512)
    await img.close()
    moved = header(path)
    assert moved.offset_blocks == h.offset_data and moved.blocks_total == 1024
    img = VdiImage.open(path, read_only=True)
    for i, d in enumerate(data):
        assert await img.pread(i * 30 * MiB, 4096) == d
    assert await img.pread(1000 * MiB, 512) == b"n" * 512 and img.check().clean
    await img.close()


def test_probe() -> None:
    head = L.new_header(MiB, MiB, False).pack()
    assert VdiImage.probe(head, 1 << 21)
    assert not VdiImage.probe(b"\0" * 512, 512) and not VdiImage.probe(b"", 0)


@pytest.mark.parametrize(("kw", "message"), [
    ({"variant": "stream"}, "no variant"), ({"block_size": 3000}, "power of two"),
    ({"cluster": 1}, "unknown VDI option"),
])
def test_create_refuses_bad_requests(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(MediaError, match=message):
        VdiImage.create(tmp_path / "x.vdi", MiB, **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "x.vdi").exists()


async def test_create_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "e.vdi"
    path.write_bytes(b"keep")
    with pytest.raises(MediaError, match="already exists"):
        VdiImage.create(path, MiB)
    assert path.read_bytes() == b"keep"


async def test_odd_disk_size_is_rounded_down(tmp_path: Path) -> None:
    path = tmp_path / "o.vdi"
    await VdiImage.create(path, 2 * MiB).close()
    rewrite_header(path, disk_size=2 * MiB - 100)  # §1.2: VirtualBox rounds odd sizes down
    img = VdiImage.open(path, read_only=True)
    assert img.size == 2 * MiB - 512
    await img.close()


@pytest.mark.parametrize("seed", [1, 2])
async def test_concurrent_io_while_blocks_move(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "s.vdi"
    img = VdiImage.create(path, 8 * MiB, block_size=256 << 10)  # block writes use the I/O pool
    await concurrent_stress(img, tasks=8, ops=150, seed=seed)
    await img.close()
    img = VdiImage.open(path, read_only=True)
    assert img.check().clean
    await img.close()
