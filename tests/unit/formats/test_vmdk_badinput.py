"""Bad VMDK input: every open fails with one MediaError naming the file, and
never writes (bytes compared before and after, read-write opens included)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockyard.block.formats import create_image, open_image
from blockyard.block.formats.vmdk import VmdkImage
from blockyard.block.formats.vmdk_layout import load_tables, parse_header
from blockyard.errors import BlockError, MediaError

MiB = 1 << 20


def digest(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "-" for p in paths]


def assert_refused(path: Path, fragment: str, *, at_fault: Path | None = None) -> None:
    files = sorted(path.parent.iterdir())
    before = digest(files)
    for read_only in (False, True):
        with pytest.raises(MediaError) as info:
            VmdkImage.open(path, read_only=read_only)
        msg = str(info.value)
        assert msg.startswith(f"{at_fault or path}: "), msg
        assert fragment in msg, msg
        assert "\n" not in msg
    assert digest(files) == before


def sparse_image(d: Path, **opts: object) -> Path:
    async def make() -> None:
        img = create_image(d / "s.vmdk", 2 * MiB, "vmdk", **opts)
        await img.pwrite(0, b"\x11" * 70000)
        await img.pwrite(MiB, b"\x22" * 4096)
        await img.close()
    asyncio.run(make())
    return d / "s.vmdk"


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def tables(path: Path):  # noqa: ANN201
    fd = os.open(path, os.O_RDONLY)
    try:
        h = parse_header(os.pread(fd, 512, 0), str(path))
        return h, load_tables(fd, h, os.fstat(fd).st_size, str(path))
    finally:
        os.close(fd)


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "x.vmdk"
    p.write_bytes(os.urandom(5000))
    assert_refused(p, "not a VMDK")
    p.write_bytes(b"")
    assert_refused(p, "not a VMDK")
    p.write_text("just some text\nversion=1\n")
    assert_refused(p, "not a VMDK")


def test_wrong_magic_and_cowd(tmp_path: Path) -> None:
    p = sparse_image(tmp_path)
    patch(p, 0, b"KDMX")
    assert_refused(p, "not a VMDK")
    patch(p, 0, b"COWD")
    assert_refused(p, "COWD")


@pytest.mark.parametrize("cut", [100, 511, 4000])
def test_truncated_sparse_file(tmp_path: Path, cut: int) -> None:
    p = sparse_image(tmp_path)
    os.truncate(p, cut)
    assert_refused(p, "truncated" if cut > 511 else "truncated sparse extent header")


FIELDS: list[tuple[str, int, str, int, str]] = [
    ("version", 4, "<I", 9, "version 9"),
    ("grain size 3", 20, "<Q", 3, "invalid grain size"),
    ("grain size 0", 20, "<Q", 0, "invalid grain size"),
    ("grain size huge", 20, "<Q", 1 << 20, "invalid grain size"),
    ("gtes 0", 44, "<I", 0, "numGTEsPerGT"),
    ("gtes 1024", 44, "<I", 1024, "numGTEsPerGT"),
    ("gd past eof", 56, "<Q", 1 << 30, "past the end"),
    ("gd zero", 56, "<Q", 0, "offset is 0"),
    ("capacity absurd", 12, "<Q", 1 << 62, "too large"),
    ("compression", 77, "<H", 7, "unknown compression"),
    ("descriptor size", 36, "<Q", 5000, "descriptor size"),
    ("overhead past eof", 64, "<Q", 1 << 20, "truncated"),
]


@pytest.mark.parametrize("name, off, fmt, value, fragment", FIELDS, ids=[f[0] for f in FIELDS])
def test_bad_header_fields(tmp_path: Path, name: str, off: int, fmt: str, value: int,
                           fragment: str) -> None:
    p = sparse_image(tmp_path)
    patch(p, off, struct.pack(fmt, value))
    assert_refused(p, fragment)


def test_crlf_damage(tmp_path: Path) -> None:
    p = sparse_image(tmp_path)
    patch(p, 73, b"\n \n\n")
    assert_refused(p, "CR/LF")


def test_grain_table_past_eof(tmp_path: Path) -> None:
    p = sparse_image(tmp_path)
    h, _t = tables(p)
    patch(p, h.gd_offset * 512, struct.pack("<I", 10**6))
    assert_refused(p, "grain table 0 at sector 1000000 lies past the end")


def test_grain_pointer_past_eof(tmp_path: Path) -> None:
    p = sparse_image(tmp_path)
    _h, t = tables(p)
    patch(p, t.gd[0] * 512 + 4 * 7, struct.pack("<I", 10**6))
    assert_refused(p, "GD 0 GTE 7 points past the end")


def test_two_entries_on_one_grain(tmp_path: Path) -> None:
    p = sparse_image(tmp_path)
    _h, t = tables(p)
    first = t.gts[0][0]
    patch(p, t.gd[0] * 512 + 4 * 9, struct.pack("<I", first))
    assert_refused(p, f"GD 0 GTE 0 and GD 0 GTE 9 overlap: grains at sectors {first} and {first}")


def test_grain_pointer_into_metadata(tmp_path: Path) -> None:
    p = sparse_image(tmp_path, grain_size=4096)
    h, t = tables(p)
    patch(p, t.gd[0] * 512 + 4 * 300, struct.pack("<I", h.gd_offset))
    assert_refused(p, "GD 0 GTE 300 points into the GD")
    patch(p, t.gd[0] * 512 + 4 * 300, struct.pack("<I", 1))  # GTE 1 without the zero flag
    assert_refused(p, "points into the descriptor")


def test_grains_overlapping(tmp_path: Path) -> None:
    p = sparse_image(tmp_path)
    _h, t = tables(p)
    patch(p, t.gd[0] * 512 + 4 * 20, struct.pack("<I", t.gts[0][0] + 64))  # half a grain on
    assert_refused(p, "GD 0 GTE 0 and GD 0 GTE 20 overlap")


def test_overlapping_tables(tmp_path: Path) -> None:
    p = sparse_image(tmp_path)
    h, t = tables(p)
    patch(p, h.gd_offset * 512, struct.pack("<I", h.gd_offset))  # GT 0 on top of the GD
    assert_refused(p, "overlap")


def test_descriptor_naming_missing_extent(tmp_path: Path) -> None:
    async def make() -> None:
        img = create_image(tmp_path / "f.vmdk", MiB, "vmdk", "split2g", extent_size=MiB // 2)
        await img.close()
    asyncio.run(make())
    (tmp_path / "f-s002.vmdk").unlink()
    assert_refused(tmp_path / "f.vmdk", f"extent file {tmp_path / 'f-s002.vmdk'} is missing")


def test_extent_line_larger_than_sparse_capacity(tmp_path: Path) -> None:
    async def make() -> None:
        img = create_image(tmp_path / "f.vmdk", MiB, "vmdk", "split2g", extent_size=MiB // 2)
        await img.close()
    asyncio.run(make())
    d = tmp_path / "f.vmdk"
    d.write_text(d.read_text().replace("RW 1024 SPARSE \"f-s001", "RW 2048 SPARSE \"f-s001"))
    assert_refused(d, "only 1024", at_fault=tmp_path / "f-s001.vmdk")


def test_bad_embedded_descriptor(tmp_path: Path) -> None:
    p = sparse_image(tmp_path)
    patch(p, 512, b"\xff\xfe garbage")
    assert_refused(p, "not UTF-8")
    patch(p, 512, b'version=1\nCID=zz\ncreateType="monolithicSparse"\nRW 4096 SPARSE "s"\n\0')
    assert_refused(p, "CID='zz' is not hexadecimal")


def test_descriptor_too_large(tmp_path: Path) -> None:
    p = tmp_path / "t.vmdk"
    p.write_bytes(b"version=1\n" + b"#" * (2 * MiB))
    assert_refused(p, "too large")


def test_stream_without_footer(tmp_path: Path) -> None:
    async def make() -> None:
        img = create_image(tmp_path / "s.vmdk", MiB, "vmdk", "stream")
        await img.pwrite(0, os.urandom(65536))
        await img.close()
    asyncio.run(make())
    p = tmp_path / "s.vmdk"
    os.truncate(p, p.stat().st_size - 512)  # the end-of-stream marker is gone
    assert_refused(p, "footer")


# ---- fuzzing the header and the tables of a real image ----------------------------------
def fuzz_one(src: bytes, edits: list[tuple[int, bytes]], where: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.vmdk"
        raw = bytearray(src)
        for off, data in edits:
            off = (off % where)
            raw[off:off + len(data)] = data
        p.write_bytes(bytes(raw[:len(src)]))
        before = p.read_bytes()

        async def go() -> None:
            try:
                img = open_image(p, fmt="vmdk")
            except MediaError as exc:
                assert str(exc).startswith(f"{p}: ") and "\n" not in str(exc)
                return
            try:  # bounded: a mutated capacity can declare terabytes
                await img.pread(0, min(img.size, 4 << 20))
                await img.pread(max(0, img.size - 65536), min(img.size, 65536))
                await img.extents(0, img.size)
                img.check()
            except BlockError:
                pass
            finally:
                await img.close()
        asyncio.run(go())
        assert p.read_bytes() == before


_REAL: dict[str, bytes] = {}


def real_image() -> bytes:
    if "img" not in _REAL:
        with tempfile.TemporaryDirectory() as d:
            _REAL["img"] = sparse_image(Path(d), grain_size=4096).read_bytes()
    return _REAL["img"]


edit = st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8))


@given(st.lists(edit, min_size=1, max_size=4), st.sampled_from([512, 12288, 1 << 20]))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_header_descriptor_and_tables(edits: list[tuple[int, bytes]], where: int) -> None:
    """Mutations inside the header (512), header + descriptor + GD/GTs, or anywhere."""
    fuzz_one(real_image(), edits, where)


@pytest.mark.soak
@given(st.lists(edit, min_size=1, max_size=8), st.sampled_from([512, 12288, 1 << 20]))
@settings(max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_header_descriptor_and_tables_soak(edits: list[tuple[int, bytes]],
                                                where: int) -> None:
    fuzz_one(real_image(), edits, where)


@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.bin", "sub/../../x"])
def test_extent_outside_descriptor_directory(tmp_path: Path, name: str) -> None:
    d = tmp_path / "img"
    d.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"secret" * 100)
    p = d / "evil.vmdk"
    p.write_text(f'version=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
                 f'RW 1 FLAT "{name}" 0\n')
    assert_refused(p, "lies outside the descriptor's directory")
