"""ParallelsImage: both magics, in-use mark, BAT publication order, maintenance,
a model property test, and bad input (image-formats.md §4, §7)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import tempfile
from array import array
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockyard.block.formats import create_image, open_image, probe
from blockyard.block.formats import parallels_layout as pl
from blockyard.block.formats.parallels import ParallelsImage
from blockyard.block.layer import HOLE, ZERO
from blockyard.errors import BlockError, MediaError

MiB = 1 << 20
C = 64 << 10  # cluster size used in most tests


def header(path: Path) -> pl.Header:
    return pl.parse(path.read_bytes()[:64], str(path))


def disk_bat(path: Path) -> array:
    h = header(path)
    return array("I", path.read_bytes()[64:64 + 4 * h.bat_entries])


@pytest.mark.parametrize("magic", ["v1", "ext"])
async def test_create_write_reopen(tmp_path: Path, magic: str) -> None:
    p = tmp_path / "d.hds"
    img = create_image(p, 3 * MiB + 512, "parallels", magic=magic, cluster_size=C)
    assert probe(p) == "parallels"
    h = header(p)
    assert h.magic == (pl.MAGIC_V1 if magic == "v1" else pl.MAGIC_EXT)
    assert h.tracks == C // 512 and h.bat_entries == 49 and h.data_off % h.tracks == 0
    assert p.stat().st_size == h.data_off * 512  # header + zero BAT, nothing else
    model = bytearray(3 * MiB + 512)
    for off, n, b in [(0, 1, 1), (C - 5, 10, 2), (MiB + 3, 2 * C, 3), (3 * MiB, 512, 4)]:
        await img.pwrite(off, bytes([b]) * n)
        model[off:off + n] = bytes([b]) * n
    await img.close()
    img = open_image(p)
    assert isinstance(img, ParallelsImage)
    assert bytes(await img.pread(0, img.size)) == model
    info = img.info()
    assert info.block_size == C and info.extra["bat_unit"] == ("sectors" if magic == "v1"
                                                               else "clusters")
    assert not info.dirty and img.check().clean
    await img.close()
    unit = 1 if magic == "v1" else h.tracks
    used = sorted(v * unit for v in disk_bat(p) if v)
    assert all((s - h.data_off) % h.tracks == 0 for s in used)


async def test_in_use_mark_and_bat_published_at_flush(tmp_path: Path) -> None:
    p = tmp_path / "d.hds"
    img = create_image(p, MiB, "parallels", cluster_size=C)
    assert header(p).inuse == 0
    await img.pwrite(C + 7, b"hello")
    assert header(p).inuse == pl.INUSE
    assert not any(disk_bat(p))  # data first; the BAT entry waits for the flush
    reader = open_image(p, read_only=True)
    assert reader.info().dirty
    await reader.close()
    await img.flush()
    assert disk_bat(p)[1] != 0
    await img.pwrite(3 * C, b"fua", fua=True)
    assert disk_bat(p)[3] != 0
    await img.close()
    assert header(p).inuse == pl.CLOSED


async def test_read_only_open_and_reads_never_write(tmp_path: Path) -> None:
    p = tmp_path / "d.hds"
    img = create_image(p, MiB, "parallels", cluster_size=C)
    await img.pwrite(0, b"x" * 100)
    await img.close()
    before = p.read_bytes()
    for ro in (True, False):
        img = open_image(p, read_only=ro)
        await img.pread(0, MiB)
        await img.extents(0, MiB)
        img.check()
        await img.close()
    assert p.read_bytes() == before
    img = open_image(p, read_only=True)
    with pytest.raises(BlockError):
        await img.pwrite(0, b"y")
    await img.close()


async def test_zero_unmaps_whole_clusters(tmp_path: Path) -> None:
    p = tmp_path / "d.hds"
    img = create_image(p, MiB, "parallels", cluster_size=C)
    await img.pwrite(0, b"\x33" * (3 * C))
    await img.zero(C, C)
    await img.trim(2 * C + 100, 50)
    assert await img.extents(0, 3 * C) == [(C, 0), (C, HOLE | ZERO), (C, 0)]
    data = bytes(await img.pread(0, 3 * C))
    assert data[C:2 * C] == bytes(C) and data[2 * C + 100:2 * C + 150] == bytes(50)
    size = p.stat().st_size
    await img.flush()
    await img.pwrite(8 * C, b"\x44" * C)  # reuses the cluster freed before the flush
    assert p.stat().st_size == size
    await img.close()


async def test_format_extension_and_empty_flag_cleared_by_first_write(tmp_path: Path) -> None:
    p = tmp_path / "d.hds"
    img = create_image(p, MiB, "parallels", magic="ext", cluster_size=C)
    await img.close()
    h = header(p)
    with open(p, "r+b") as f:  # pretend an extension cluster exists right after the data
        f.truncate(h.data_off * 512 + C)
        f.seek(52)
        f.write(struct.pack("<IQ", pl.FLAG_EMPTY, h.data_off))
    img = open_image(p)
    assert img.info().extra["format_extension"] == h.data_off
    await img.pwrite(0, b"a")  # must not land on the extension cluster
    await img.close()
    h2 = header(p)
    assert h2.ext_off == 0 and h2.flags == 0
    assert disk_bat(p)[0] * h2.tracks != h.data_off


async def test_check_leaks_dirty_and_repair(tmp_path: Path) -> None:
    p = tmp_path / "d.hds"
    img = create_image(p, MiB, "parallels", cluster_size=C)
    await img.pwrite(0, b"q" * 10)
    await img.close()
    with open(p, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(b"\0" * (2 * C))
        f.seek(44)
        f.write(struct.pack("<I", pl.INUSE))
    img = open_image(p)
    report = img.check()
    assert not report.errors and report.leaks and img.info().dirty
    fixed = img.check(repair=True)
    assert len(fixed.repaired) == 2 and img.check().clean and not img.info().dirty
    assert bytes(await img.pread(0, 10)) == b"q" * 10
    await img.close()
    assert header(p).inuse == pl.CLOSED


async def test_compact_and_resize(tmp_path: Path) -> None:
    p = tmp_path / "d.hds"
    img = create_image(p, 2 * MiB, "parallels", cluster_size=C)
    await img.pwrite(0, b"\x01" * (2 * MiB))
    await img.pwrite(0, bytes(MiB))
    freed = await img.compact()
    assert freed >= MiB - C
    assert bytes(await img.pread(0, 2 * MiB)) == bytes(MiB) + b"\x01" * MiB
    with pytest.raises(MediaError, match="past the new size"):
        await img.resize(MiB)
    # grow far enough that the BAT needs the first data cluster
    await img.resize(2 * MiB + C * 128 * 16)
    assert img.size == 2 * MiB + C * 128 * 16
    await img.pwrite(img.size - 3, b"end")
    await img.close()
    img = open_image(p)
    assert bytes(await img.pread(MiB, MiB)) == b"\x01" * MiB
    assert bytes(await img.pread(img.size - 3, 3)) == b"end"
    assert img.check().clean
    await img.resize(MiB + 512, force=True)
    await img.close()
    img = open_image(p)
    assert img.size == MiB + 512 and not img.check().errors
    assert bytes(await img.pread(MiB, 512)) == b"\x01" * 512
    await img.close()


# ---- model property test ------------------------------------------------------------------
SIZE = 6 * 4096 * 4 + 1024
offsets = st.integers(0, SIZE - 1)
lengths = st.integers(1, 3 * 16384)
op = st.one_of(
    st.tuples(st.just("write"), offsets, lengths, st.integers(1, 255)),
    st.tuples(st.just("zero"), offsets, lengths, st.just(0)),
    st.tuples(st.just("trim"), offsets, lengths, st.just(0)),
    st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(0)),
)


async def apply(path: Path, magic: str, ops: list[tuple[str, int, int, int]]) -> None:
    img = create_image(path, SIZE, "parallels", magic=magic, cluster_size=16384)
    model = bytearray(SIZE)
    for name, off, n, arg in ops:
        n = min(n, SIZE - off)
        if name == "write":
            await img.pwrite(off, bytes([arg]) * n)
            model[off:off + n] = bytes([arg]) * n
        elif name == "zero":
            await img.zero(off, n)
            model[off:off + n] = bytes(n)
        elif name == "trim":
            await img.trim(off, n)
            model[off:off + n] = bytes(n)
        elif name == "flush":
            await img.flush()
        else:
            await img.close()
            img = open_image(path)
    await img.close()
    img = open_image(path, read_only=True)
    assert bytes(await img.pread(0, SIZE)) == model
    assert not img.check().errors and not img.info().dirty
    await img.close()


@pytest.mark.parametrize("magic", ["v1", "ext"])
@given(ops=st.lists(op, max_size=25))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_operations_match_model(magic: str, ops: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(apply(Path(d) / "m.hds", magic, ops))


@pytest.mark.soak
@pytest.mark.parametrize("magic", ["v1", "ext"])
@given(ops=st.lists(op, max_size=150))
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_operations_match_model_soak(magic: str,
                                            ops: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(apply(Path(d) / "m.hds", magic, ops))


# ---- bad input ----------------------------------------------------------------------------
def make(d: Path, magic: str = "ext") -> Path:
    async def go() -> None:
        img = create_image(d / "b.hds", MiB, "parallels", magic=magic, cluster_size=C)
        await img.pwrite(0, b"\x01" * 100)
        await img.pwrite(5 * C, b"\x02" * 100)
        await img.close()
    asyncio.run(go())
    return d / "b.hds"


def refused(p: Path, fragment: str) -> None:
    before = hashlib.sha256(p.read_bytes()).hexdigest()
    for ro in (False, True):
        with pytest.raises(MediaError) as info:
            ParallelsImage.open(p, read_only=ro)
        assert str(info.value).startswith(f"{p}: ") and fragment in str(info.value), info.value
    assert hashlib.sha256(p.read_bytes()).hexdigest() == before


def poke(p: Path, off: int, data: bytes) -> None:
    with open(p, "r+b") as f:
        f.seek(off)
        f.write(data)


BAD = [
    ("magic", 0, b"WithoutFreeSpacX", "no Parallels magic"),
    ("version", 16, struct.pack("<I", 3), "version 3"),
    ("tracks 0", 28, struct.pack("<I", 0), "invalid cluster size"),
    ("bat too small", 32, struct.pack("<I", 3), "cannot map"),
    ("bat huge", 32, struct.pack("<I", 1 << 31), "too large"),
    ("data_off unaligned", 48, struct.pack("<I", 129), "not cluster aligned"),
    ("data_off in bat", 48, struct.pack("<I", 0), "not cluster aligned"),
    ("entry past eof", 64, struct.pack("<I", 500), "BAT entry 0 points past the end"),
]


def test_not_an_image_and_truncated(tmp_path: Path) -> None:
    p = tmp_path / "x.hds"
    p.write_bytes(os.urandom(4096))
    refused(p, "no Parallels magic")
    p = make(tmp_path)
    os.truncate(p, 40)
    refused(p, "truncated Parallels header")
    p.unlink()
    p = make(tmp_path)
    os.truncate(p, 100)
    refused(p, "file truncated: the BAT needs")


@pytest.mark.parametrize("name, off, data, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_header_fields(tmp_path: Path, name: str, off: int, data: bytes,
                           fragment: str) -> None:
    p = make(tmp_path)
    poke(p, off, data)
    refused(p, fragment)


@pytest.mark.parametrize("magic", ["v1", "ext"])
def test_bat_pointers(tmp_path: Path, magic: str) -> None:
    p = make(tmp_path, magic)
    h, bat = header(p), disk_bat(p)
    poke(p, 64 + 4 * 5, struct.pack("<I", bat[0]))
    refused(p, "BAT entries 0 and 5 share clusters")
    if magic == "v1":  # ext: cluster 1 is already the first data cluster
        poke(p, 64 + 4 * 5, struct.pack("<I", 1))
        refused(p, "BAT entry 5 points below the data area")
    unit = 1 if magic == "v1" else h.tracks
    poke(p, 64 + 4 * 5, struct.pack("<I", (p.stat().st_size // 512 + 1) // unit + 1))
    refused(p, "BAT entry 5 points past the end")


_REAL: dict[str, bytes] = {}


def fuzz(edits: list[tuple[int, bytes]], span: int) -> None:
    if "img" not in _REAL:
        with tempfile.TemporaryDirectory() as d:
            _REAL["img"] = make(Path(d)).read_bytes()
    src = _REAL["img"]
    raw = bytearray(src)
    for off, data in edits:
        raw[off % span:off % span + len(data)] = data
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.hds"
        p.write_bytes(bytes(raw[:len(src)]))

        async def go() -> None:
            try:
                img = ParallelsImage.open(p)
            except MediaError as exc:
                assert str(exc).startswith(f"{p}: ")
                return
            try:  # bounded: a mutated size can declare terabytes
                await img.pread(0, min(img.size, 4 << 20))
                await img.pread(max(0, img.size - 65536), min(img.size, 65536))
                await img.extents(0, img.size)
                img.check()
            except BlockError:
                pass
            finally:
                await img.close()
        asyncio.run(go())
        assert bytes(raw[:len(src)]) == p.read_bytes()


edit = st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8))


@given(st.lists(edit, min_size=1, max_size=4), st.sampled_from([64, 64 + 4 * 16, 1 << 20]))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_header_and_bat(edits: list[tuple[int, bytes]], span: int) -> None:
    fuzz(edits, span)


@pytest.mark.soak
@given(st.lists(edit, min_size=1, max_size=8), st.sampled_from([64, 64 + 4 * 16, 1 << 20]))
@settings(max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_header_and_bat_soak(edits: list[tuple[int, bytes]], span: int) -> None:
    fuzz(edits, span)
