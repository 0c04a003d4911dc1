"""Broken VDI files: open raises MediaError naming the file, and never writes to it."""

from __future__ import annotations

import asyncio
import os
import struct
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockyard.block.formats import vdi_layout as L
from blockyard.block.formats.vdi import VdiImage
from blockyard.errors import BlockError, MediaError

MiB = 1 << 20


def build(path: Path, *, packed: bool = False, blocks: int = 3) -> None:
    """A valid dynamic image with ``blocks`` written blocks (qemu-packed or VirtualBox layout)."""
    async def go() -> None:
        if packed:  # the header qemu-img writes: 0x180 bytes, map and data packed at 512
            h = L.new_header(8 * MiB, 64 << 10, fixed=False, align=512)
            h.header_size, h.lchs = L.HEADER_V1_SIZE, None
            h.text = b"<<< QEMU VM Virtual Disk Image >>>\n".ljust(64, b"\0")
            path.write_bytes(h.pack().ljust(h.offset_blocks, b"\0") + b"\xff" * 4 * 128)
            os.truncate(path, h.offset_data)
            img = VdiImage.open(path)
        else:
            img = VdiImage.create(path, 8 * MiB)
        for block in range(blocks):
            await img.pwrite(block * 2 * img.block_size + 7, b"data%d" % block)
        await img.close()
    asyncio.run(go())


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def set_map_entry(path: Path, block: int, value: int) -> None:
    h = L.parse_header(path.read_bytes()[:0x1D8], str(path))
    patch(path, h.offset_blocks + 4 * block, u32(value))


CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("empty", lambda p: os.truncate(p, 0), "too short"),
    ("100 bytes", lambda p: os.truncate(p, 100), "too short"),
    ("map cut off", lambda p: os.truncate(p, MiB + 8), "block map extends past"),
    ("signature", lambda p: patch(p, 0x40, b"\0\0\0\0"), "not a VDI image"),
    ("version 2.0", lambda p: patch(p, 0x44, u32(0x00020000)), "unsupported VDI version"),
    ("version 0.1", lambda p: patch(p, 0x44, u32(0x00000001)), "unsupported VDI version"),
    ("header size", lambda p: patch(p, 0x48, u32(0x100)), "header size"),
    ("undo type", lambda p: patch(p, 0x4C, u32(3)), "undo"),
    ("type 9", lambda p: patch(p, 0x4C, u32(9)), "image type"),
    ("flags", lambda p: patch(p, 0x50, u32(2)), "flags"),
    ("sector size", lambda p: patch(p, 0x168, u32(1024)), "sector size"),
    ("disk size 0", lambda p: patch(p, 0x170, bytes(8)), "disk size is 0"),
    ("block size 3000", lambda p: patch(p, 0x178, u32(3000)), "block size"),
    ("block size 0", lambda p: patch(p, 0x178, u32(0)), "block size"),
    ("extra 3", lambda p: patch(p, 0x17C, u32(3)), "block-extra"),
    ("no blocks", lambda p: patch(p, 0x180, u32(0)), "block count"),
    ("too few blocks", lambda p: patch(p, 0x180, u32(4)), "too small"),
    ("allocated > total", lambda p: patch(p, 0x184, u32(9)), "allocated blocks"),
    ("map in header", lambda p: patch(p, 0x154, u32(0x100)), "overlaps the header"),
    ("data in map", lambda p: patch(p, 0x158, u32(MiB + 4)), "overlaps the block map"),
    ("map past EOF", lambda p: patch(p, 0x154, u32(0x7FFF0000) + u32(0x7FFF1000)),
     "block map extends past"),
    ("image uuid 0", lambda p: patch(p, 0x188, bytes(16)), "image UUID is all zero"),
    ("modification uuid 0", lambda p: patch(p, 0x198, bytes(16)), "modification UUID"),
    ("slot past EOF", lambda p: set_map_entry(p, 6, 5), "past the end of file"),
    ("slot >= total", lambda p: set_map_entry(p, 6, 100), ">= 8"),
    ("shared slot", lambda p: set_map_entry(p, 6, 0), "share slot 0"),
]


@pytest.mark.parametrize(("name", "damage", "message"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("read_only", [True, False])
def test_broken_image_is_refused_without_a_write(
        tmp_path: Path, snapshot: Callable[[Path], Any], name: str,
        damage: Callable[[Path], None], message: str, read_only: bool) -> None:
    path = tmp_path / "bad.vdi"
    build(path)
    damage(path)
    before = snapshot(path)
    with pytest.raises(MediaError) as exc:
        VdiImage.open(path, read_only=read_only)
    text = str(exc.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    assert snapshot(path) == before


async def open_and_read(path: Path, read_only: bool) -> None:
    """Open; when that works every read either succeeds or is a BlockError."""
    try:
        img = VdiImage.open(path, read_only=read_only)
    except MediaError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    try:
        for offset in range(0, img.size, max(512, img.size // 16)):
            await img.pread(offset, min(4096, img.size - offset))
        img.info()
        img.check()
    except BlockError:
        pass  # a damaged but self-consistent map may point at data we cannot read
    finally:
        await img.close()


def fuzz_header(data: st.DataObject, packed: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.vdi"
        build(path, packed=packed)
        h = L.parse_header(path.read_bytes()[:0x1D8], str(path))
        region = h.offset_data  # header, map and padding
        for _ in range(data.draw(st.integers(1, 6), label="mutations")):
            where = data.draw(st.integers(0x40, min(region, 0x1D8 + 64 * 4) - 1), label="at")
            value = data.draw(st.binary(min_size=1, max_size=8), label="bytes")
            patch(path, where, value)
        if data.draw(st.booleans(), label="truncate"):
            os.truncate(path, data.draw(st.integers(0, path.stat().st_size), label="size"))
        read_only = data.draw(st.booleans(), label="read_only")
        before = path.read_bytes()
        try:
            VdiImage.open(path, read_only=read_only)
        except MediaError:
            assert path.read_bytes() == before  # refused: not a byte written
        asyncio.run(open_and_read(path, read_only))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), packed=st.booleans())
def test_fuzz_header_and_map(data: st.DataObject, packed: bool) -> None:
    fuzz_header(data, packed)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@settings(max_examples=20000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), packed=st.booleans())
def test_fuzz_header_and_map_soak(data: st.DataObject, packed: bool) -> None:
    fuzz_header(data, packed)


def test_parse_header_round_trips_every_field() -> None:
    h = L.new_header(5 * MiB + 512, 2 * MiB, fixed=True)
    h.comment = b"hello".ljust(256, b"\0")
    h.uuid_link = uuid.uuid4()
    assert L.parse_header(h.pack(), "x") == h
