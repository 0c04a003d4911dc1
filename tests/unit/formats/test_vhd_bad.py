"""Broken VHD files: open raises MediaError naming the file, and never writes to it."""

from __future__ import annotations

import asyncio
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockyard.block.formats import vhd_layout as V
from blockyard.block.formats.vhd import VhdImage
from blockyard.errors import BlockError, MediaError

MiB = 1 << 20
BS = 64 << 10


def build(path: Path, variant: str = "dynamic") -> None:
    async def go() -> None:
        img = VhdImage.create(path, 2 * MiB, variant=variant, block_size=BS)
        for block in (0, 3, 7):
            await img.pwrite(block * BS + 512, b"blk%d" % block)
        await img.close()
    asyncio.run(go())


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def edit_footer(path: Path, **fields: Any) -> None:
    """Change footer fields, with valid checksums, in both copies (dynamic) or at EOF."""
    end = path.stat().st_size - 512
    footer, _ = V.parse_footer(path.read_bytes()[end:])
    assert footer is not None
    for key, value in fields.items():
        setattr(footer, key, value)
    raw = footer.pack()
    patch(path, end, raw)
    if footer.disk_type != V.FIXED and path.read_bytes()[:8] == b"conectix":
        patch(path, 0, raw)


def edit_header(path: Path, **fields: Any) -> None:
    header, _ = V.parse_dyn_header(path.read_bytes()[512:1536])
    assert header is not None
    for key, value in fields.items():
        setattr(header, key, value)
    patch(path, 512, header.pack())


def bat(path: Path, block: int, value: int) -> None:
    patch(path, 1536 + 4 * block, struct.pack(">I", value))


def both_footers(path: Path, offset: int, data: bytes) -> None:
    patch(path, offset, data)
    patch(path, path.stat().st_size - 512 + offset, data)


CASES: list[tuple[str, str, Callable[[Path], None], str]] = [
    ("empty", "dynamic", lambda p: os.truncate(p, 0), "too short"),
    ("100 bytes", "dynamic", lambda p: os.truncate(p, 100), "too short"),
    ("no cookie", "dynamic", lambda p: both_footers(p, 0, b"xxxxxxxx"), "cookie"),
    ("fixed checksum", "fixed", lambda p: patch(p, p.stat().st_size - 400, b"!"), "checksum"),
    ("both checksums", "dynamic", lambda p: both_footers(p, 100, b"!"), "checksum mismatch"),
    ("version", "dynamic", lambda p: edit_footer(p, version=0x20000), "unsupported VHD version"),
    ("disk type", "dynamic", lambda p: edit_footer(p, disk_type=5), "bad VHD disk type"),
    ("size 0", "dynamic", lambda p: edit_footer(p, current_size=0), "too small"),
    ("no header offset", "dynamic", lambda p: edit_footer(p, data_offset=V.NO_OFFSET),
     "without a dynamic header"),
    ("header past EOF", "dynamic", lambda p: edit_footer(p, data_offset=1 << 40),
     "dynamic header lies past"),
    ("header cookie", "dynamic", lambda p: patch(p, 512, b"cxdense!"), "cookie 'cxsparse'"),
    ("header checksum", "dynamic", lambda p: patch(p, 700, b"!"), "header checksum mismatch"),
    ("header version", "dynamic", lambda p: edit_header(p, version=0x30000),
     "dynamic header version"),
    ("block size", "dynamic", lambda p: edit_header(p, block_size=1000), "bad VHD block size"),
    ("BAT too short", "dynamic", lambda p: edit_header(p, max_entries=8), "too few"),
    ("BAT past EOF", "dynamic", lambda p: edit_header(p, table_offset=1 << 30), "BAT lies"),
    ("block past EOF", "dynamic", lambda p: bat(p, 9, 0x100000), "past the end of the file"),
    ("block in metadata", "dynamic", lambda p: bat(p, 9, 1), "overlaps the metadata"),
    ("shared block", "dynamic", lambda p: bat(p, 9, struct.unpack_from(
        ">I", p.read_bytes(), 1536)[0]), "share"),
    ("overlapping block", "dynamic", lambda p: bat(p, 9, struct.unpack_from(
        ">I", p.read_bytes(), 1536)[0] + 1), "overlap at"),
    ("fixed too short", "fixed", lambda p: edit_footer(p, current_size=4 * MiB),
     "shorter than its disk size"),
]


@pytest.mark.parametrize(("name", "variant", "damage", "message"), CASES,
                         ids=[c[0] for c in CASES])
@pytest.mark.parametrize("read_only", [True, False])
def test_broken_image_is_refused_without_a_write(
        tmp_path: Path, snapshot: Callable[[Path], Any], name: str, variant: str,
        damage: Callable[[Path], None], message: str, read_only: bool) -> None:
    path = tmp_path / "bad.vhd"
    build(path, variant)
    damage(path)
    before = snapshot(path)
    with pytest.raises(MediaError) as exc:
        VhdImage.open(path, read_only=read_only)
    text = str(exc.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    assert snapshot(path) == before


async def open_and_read(path: Path, read_only: bool) -> None:
    try:
        img = VhdImage.open(path, read_only=read_only)
    except MediaError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    try:
        for offset in range(0, img.size, max(512, img.size // 16)):
            await img.pread(offset, min(4096, img.size - offset))
        await img.extents(0, img.size)
        img.info()
        img.check()
    except BlockError:
        pass
    finally:
        await img.close()


def refresh_checksums(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    for start in (0, len(raw) - 512):
        if start >= 0 and raw[start:start + 8] == b"conectix":
            raw[start + 64:start + 68] = V.checksum(bytes(raw[start:start + 512]), 64).to_bytes(
                4, "big")
    if raw[512:520] == b"cxsparse":
        raw[512 + 36:512 + 40] = V.checksum(bytes(raw[512:1536]), 36).to_bytes(4, "big")
    path.write_bytes(bytes(raw))


def fuzz(data: st.DataObject, variant: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.vhd"
        build(path, variant)
        size = path.stat().st_size
        for _ in range(data.draw(st.integers(1, 6), label="mutations")):
            at = data.draw(st.one_of(st.integers(0, min(size, 1536 + 512) - 1),
                                     st.integers(size - 512, size - 1)), label="at")
            patch(path, at, data.draw(st.binary(min_size=1, max_size=8), label="bytes"))
        if data.draw(st.booleans(), label="fix checksums"):
            refresh_checksums(path)
        if data.draw(st.booleans(), label="truncate"):
            os.truncate(path, data.draw(st.integers(0, size), label="size"))
        read_only = data.draw(st.booleans(), label="read_only")
        before = path.read_bytes()
        try:
            VhdImage.open(path, read_only=read_only)
        except MediaError:
            assert path.read_bytes() == before
        asyncio.run(open_and_read(path, read_only))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), variant=st.sampled_from(["dynamic", "fixed"]))
def test_fuzz_footer_header_and_bat(data: st.DataObject, variant: str) -> None:
    fuzz(data, variant)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@settings(max_examples=20000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), variant=st.sampled_from(["dynamic", "fixed"]))
def test_fuzz_footer_header_and_bat_soak(data: st.DataObject, variant: str) -> None:
    fuzz(data, variant)
