"""``Layer.sync_map``: FileMap, and what each format driver maps.

Every answer is checked against the image's own ``pread``: the bytes of the
runs (read with ``os.pread``) must be exactly the request's bytes.  Ranges
holding a byte that is not plain data in the image's files -- unallocated,
zero-marked, the parent's, compressed -- must answer None.
"""

from __future__ import annotations

import gc
import os
import random
from pathlib import Path
from typing import Any

import pytest

from blockyard.block.chain_facts import ParentFacts
from blockyard.block.formats import create_image, open_image
from blockyard.block.formats.vdi_diff import create_child as vdi_child
from blockyard.block.formats.vhd_diff import create_child as vhd_child
from blockyard.block.formats.vmdk import VmdkImage
from blockyard.block.layer import FileMap
from blockyard.block.ram import RamDisk

MiB = 1 << 20
G = 64 << 10  # VMDK grain
SIZE = 16 * MiB
DATA = [(0, 8 * MiB), (14 * MiB, 2 * MiB)]  # written with random bytes
UNALLOCATED = (8 * MiB, 4 * MiB)  # never written
ZEROED = (12 * MiB, 2 * MiB)  # written, then zeroed
FORMATS = ["vdi", "vhd", "vmdk"]


def mapped_bytes(fmap: FileMap) -> bytes:
    return b"".join(os.pread(fd, n, off) for fd, off, n in fmap)


async def build(path: Path, fmt: str, variant: str = "dynamic", **opts: Any) -> Any:
    """A 16 MiB image: random data, an unallocated gap, a zeroed range."""
    img = create_image(path, SIZE, fmt, variant, **opts)
    rng = random.Random(7)
    for off, n in [*DATA, ZEROED]:
        await img.pwrite(off, rng.randbytes(n))
    await img.zero(*ZEROED)
    await img.flush()
    return img


async def check_answer(img: Any, offset: int, length: int) -> bool:
    """The answer is None or exactly the image's bytes; True when it mapped."""
    fmap = img.sync_map(offset, length)
    if fmap is None:
        return False
    try:
        assert sum(n for _fd, _off, n in fmap) == length
        assert mapped_bytes(fmap) == bytes(await img.pread(offset, length))
    finally:
        fmap.release()
    return True


def inside(offset: int, length: int, ranges: list[tuple[int, int]]) -> bool:
    return any(a <= offset and offset + length <= a + n for a, n in ranges)


def touches(offset: int, length: int, rng: tuple[int, int]) -> bool:
    return offset < rng[0] + rng[1] and rng[0] < offset + length


REQUESTS = [(0, MiB), (4096, 3 * MiB), (MiB - 512, 2 * MiB), (7 * MiB, MiB),
            (7 * MiB, 2 * MiB), (8 * MiB - 4096, 8192), (11 * MiB, 2 * MiB),
            (12 * MiB, MiB), (13 * MiB + 17, MiB), (14 * MiB, 2 * MiB), (15 * MiB + 1, 999_999),
            (SIZE - 512, 512), (0, SIZE)]


# ---- FileMap ---------------------------------------------------------------------------
def test_file_map_joins_continuing_runs_and_releases_once() -> None:
    calls: list[int] = []
    fmap = FileMap(release=lambda: calls.append(1))
    fmap.add(3, 0, 100)
    fmap.add(3, 100, 50)  # continues the run
    fmap.add(4, 150, 10)  # another file
    fmap.add(4, 200, 10)  # a gap in the file
    assert fmap == [(3, 0, 150), (4, 150, 10), (4, 200, 10)]
    fmap.release()
    fmap.release()
    assert calls == [1]


def test_split_tail_reads_the_last_bytes_and_releases_when_the_buffer_dies(
        tmp_path: Path) -> None:
    path = tmp_path / "f"
    blob = os.urandom(10000)
    path.write_bytes(blob)
    fd = os.open(path, os.O_RDONLY)
    try:
        released: list[int] = []
        fmap = FileMap([(fd, 0, 3000), (fd, 5000, 5000)], lambda: released.append(1))
        runs, tail = fmap.split_tail(4096)
        assert runs == [(fd, 0, 3000), (fd, 5000, 904)]
        assert bytes(tail) == blob[5904:10000]
        view = memoryview(tail)[100:]  # a transport's slice keeps the buffer alive
        del tail
        gc.collect()
        assert not released
        del view
        assert released == [1]
        released.clear()
        runs, tail = FileMap([(fd, 10, 20)], lambda: released.append(2)).split_tail(4096)
        assert runs == [] and bytes(tail) == blob[10:30]  # the whole run is the tail
        del tail
        assert released == [2]
    finally:
        os.close(fd)


# ---- what the drivers map -----------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
async def test_dynamic_images_map_data_and_refuse_the_rest(tmp_path: Path, fmt: str) -> None:
    img = await build(tmp_path / f"d.{fmt}", fmt)
    await img.pread(0, SIZE)  # VHD maps a block once its sector bitmap is in memory
    zero_is_data = fmt == "vhd"  # VHD zeroes inside the allocated block: still plain data
    for offset, length in REQUESTS:
        mapped = await check_answer(img, offset, length)
        plain = DATA + ([ZEROED] if zero_is_data else [])
        if inside(offset, length, plain) or (zero_is_data and inside(
                offset, length, [(12 * MiB, 4 * MiB)])):
            assert mapped, (offset, length)
        if touches(offset, length, UNALLOCATED) or (not zero_is_data and touches(
                offset, length, ZEROED)):
            assert not mapped, (offset, length)
    rng = random.Random(3)
    for _ in range(200):
        offset = rng.randrange(SIZE)
        await check_answer(img, offset, rng.randrange(1, SIZE - offset + 1))
    await img.close()


@pytest.mark.parametrize("fmt", FORMATS)
async def test_fixed_images_map_everything(tmp_path: Path, fmt: str) -> None:
    img = await build(tmp_path / f"f.{fmt}", fmt, "fixed")
    for offset, length in REQUESTS:
        assert await check_answer(img, offset, length), (offset, length)
    await img.close()


async def test_raw_image_maps_its_own_file_until_closed(tmp_path: Path) -> None:
    img = await build(tmp_path / "r.img", "raw")
    for offset, length in REQUESTS:
        assert await check_answer(img, offset, length)
    await img.close()
    assert img.sync_map(0, MiB) is None


async def test_vhd_maps_a_block_whose_bitmap_is_loaded_and_fully_set(tmp_path: Path) -> None:
    path = tmp_path / "b.vhd"
    img = create_image(path, 8 * MiB, "vhd")
    await img.pwrite(0, os.urandom(2 * MiB))  # block 0 whole
    await img.pwrite(2 * MiB, os.urandom(MiB))  # block 1 half
    await img.close()
    img = open_image(path)
    assert img.sync_map(0, MiB) is None  # bitmap not read yet: the async path loads it
    await img.pread(0, 4 * MiB)
    assert await check_answer(img, 0, 2 * MiB)
    assert await check_answer(img, 2 * MiB, MiB)  # the set half of block 1
    assert img.sync_map(2 * MiB, MiB + 512) is None  # one clear sector reads zeros
    assert img.sync_map(MiB, 3 * MiB) is None
    assert await check_answer(img, MiB, 2 * MiB)  # across the two blocks, all set
    await img.close()


async def test_vmdk_split_image_maps_across_its_extent_files(tmp_path: Path) -> None:
    for variant in ("split2g", "split2g-fixed"):
        img = await build(tmp_path / f"{variant}.vmdk", "vmdk", variant, extent_size=MiB)
        await img.pread(0, SIZE)
        fmap = img.sync_map(MiB - 4096, 2 * MiB)
        assert fmap is not None and len({fd for fd, _off, _n in fmap}) == 3
        fmap.release()
        assert await check_answer(img, MiB - 4096, 2 * MiB)
        await img.close()


async def test_compressed_vmdk_maps_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.vmdk"
    img = create_image(path, MiB, "vmdk", "stream")
    await img.pwrite(0, os.urandom(MiB))
    await img.close()
    img = open_image(path)
    assert await img.pread(0, G) and img.sync_map(0, G) is None
    await img.close()


def raw_parent(tmp_path: Path) -> ParentFacts:
    path = tmp_path / "parent.img"
    path.write_bytes(b"")
    return ParentFacts(str(path), "raw", 4 * MiB)


@pytest.mark.parametrize("maker", [vdi_child, vhd_child], ids=["vdi", "vhd"])
async def test_differencing_images_map_only_their_own_blocks(tmp_path: Path, maker: Any) -> None:
    child = maker(str(tmp_path / "child"), raw_parent(tmp_path), block_size=MiB)
    parent = RamDisk(4 * MiB)
    await parent.pwrite(0, b"P" * (4 * MiB))
    child.parent = parent
    await child.pwrite(MiB, os.urandom(MiB))  # block 1 is the child's
    await child.pwrite(2 * MiB + 4096, b"c" * 4096)  # block 2: a copy-up (VDI) or a few bits
    await child.pread(0, 4 * MiB)
    assert await check_answer(child, MiB, MiB)
    assert child.sync_map(0, MiB) is None  # the parent's
    assert child.sync_map(MiB, 3 * MiB) is None  # block 3 is the parent's
    assert await check_answer(child, 2 * MiB + 4096, 4096)
    vdi_copied_up = child.format_name == "vdi"  # VDI copies the whole block up
    assert (await check_answer(child, 2 * MiB, MiB)) is vdi_copied_up
    await child.close()


async def test_vmdk_child_maps_only_its_own_plain_grains(tmp_path: Path) -> None:
    path = tmp_path / "child.vmdk"
    img = create_image(path, MiB, "vmdk", zeroed_grain=True)
    assert isinstance(img, VmdkImage)
    img.desc.parent_cid = 0x12345678
    img.desc.parent_hint = "base.vmdk"
    await img.write_descriptor()
    await img.close()
    child = open_image(path)
    parent = RamDisk(MiB)
    await parent.pwrite(0, b"P" * MiB)
    child.parent = parent
    await child.pwrite(0, os.urandom(4 * G))
    await child.zero(G, G)  # zeroed-grain GTE: zeros that mask the parent
    assert await check_answer(child, 2 * G, 2 * G)
    assert child.sync_map(0, 2 * G) is None
    assert child.sync_map(3 * G, 2 * G) is None  # grain 4 is the parent's
    await child.close()


@pytest.mark.parametrize("fmt", ["raw", *FORMATS])
async def test_out_of_range_empty_and_closed_requests_are_not_mapped(tmp_path: Path,
                                                                     fmt: str) -> None:
    img = await build(tmp_path / f"o.{fmt}", fmt)
    await img.pread(0, SIZE)
    assert img.sync_map(SIZE - 512, 1024) is None
    assert img.sync_map(-512, 1024) is None
    assert img.sync_map(0, 0) is None
    await img.close()
    assert img.sync_map(0, MiB) is None
