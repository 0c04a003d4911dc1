"""IsoImage (image-formats.md §9): probe, PVD validation, read-only serving.

The images are built here field by field (PVD at sector 16, optional El
Torito boot record and Joliet descriptor, terminator), so every offset the
driver reads is exercised by a known value.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockyard.block.formats import create_image, open_image, probe
from blockyard.block.formats.iso import IsoImage
from blockyard.errors import BlockError, MediaError

S = 2048


def volume_descriptor(kind: int) -> bytearray:
    vd = bytearray(S)
    vd[0], vd[1:6], vd[6] = kind, b"CD001", 1
    return vd


def build_iso(sectors: int = 24, *, vol_id: str = "BLOCKYARD_TEST", block: int = S,
              space: tuple[int, int] | None = None, joliet: bool = False,
              el_torito: bool = False) -> bytes:
    data = bytearray(sectors * S)
    pvd = volume_descriptor(1)
    pvd[8:40] = b"LINUX".ljust(32)
    pvd[40:72] = vol_id.encode().ljust(32)
    le, be = space or (sectors, sectors)
    pvd[80:88] = struct.pack("<I", le) + struct.pack(">I", be)
    pvd[120:124] = struct.pack("<H", 1) + struct.pack(">H", 1)  # volume set size
    pvd[124:128] = struct.pack("<H", 1) + struct.pack(">H", 1)  # volume sequence number
    pvd[128:132] = struct.pack("<H", block) + struct.pack(">H", block)
    pvd[813:829] = b"2024010112000000"
    descriptors = [pvd]
    if el_torito:
        boot = volume_descriptor(0)
        boot[7:30] = b"EL TORITO SPECIFICATION"
        descriptors.insert(0, boot)
    if joliet:
        svd = volume_descriptor(2)
        svd[88:91] = b"%/E"
        descriptors.append(svd)
    descriptors.append(volume_descriptor(255))
    for i, vd in enumerate(descriptors):
        data[(16 + i) * S:(17 + i) * S] = vd
    for n in range(20, sectors):  # recognizable payload: sector number in every sector
        data[n * S:(n + 1) * S] = struct.pack("<I", n) * (S // 4)
    return bytes(data)


async def test_probe_open_info_and_reads(tmp_path: Path) -> None:
    p = tmp_path / "cd.iso"
    raw = build_iso(joliet=True, el_torito=True)
    p.write_bytes(raw)
    assert probe(p) == "iso"
    img = open_image(p)
    assert isinstance(img, IsoImage) and img.read_only and img.size == len(raw)
    info = img.info()
    assert info.format == "iso" and info.sector_size == 2048
    assert info.extra["volume_id"] == "BLOCKYARD_TEST" and info.extra["system_id"] == "LINUX"
    assert info.extra["joliet"] and info.extra["el_torito"]
    assert info.extra["volume_space_size"] == 24
    assert (img.limits.minimum, img.limits.preferred) == (2048, 2048)
    assert bytes(await img.pread(21 * S, S)) == struct.pack("<I", 21) * (S // 4)
    assert bytes(await img.pread(0, img.size)) == raw
    assert img.check().clean
    await img.close()


async def test_writes_are_refused_even_when_opened_read_write(tmp_path: Path) -> None:
    p = tmp_path / "cd.iso"
    p.write_bytes(build_iso())
    before = hashlib.sha256(p.read_bytes()).hexdigest()
    img = IsoImage.open(p, read_only=False)
    for call in (img.pwrite(0, b"x" * S), img.zero(0, S), img.trim(0, S)):
        with pytest.raises(BlockError) as info:
            await call
        assert info.value.errno == errno.EPERM
    assert not img.can_write and not img.can_trim
    with pytest.raises(MediaError):
        await img.resize(S * 100)
    await img.close()
    assert hashlib.sha256(p.read_bytes()).hexdigest() == before


def test_create_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="built from files"):
        create_image(tmp_path / "n.iso", 1 << 20, "iso")


def test_non_iso_does_not_probe(tmp_path: Path) -> None:
    p = tmp_path / "x.img"
    p.write_bytes(bytes(40 * S))
    assert probe(p) != "iso"
    assert not IsoImage.probe(b"\0" * 100, 100)


@pytest.mark.parametrize("raw, fragment", [
    (bytes(40 * S), "no ISO 9660 primary volume descriptor"),
    (build_iso()[:10 * S], "no ISO 9660 primary volume descriptor"),
    (build_iso(block=4096), "logical block size 4096"),
    (build_iso(space=(24, 25)), "both-endian fields disagree"),
    (build_iso(space=(100, 100)), "truncated"),
    (build_iso(space=(3, 3)), "too small"),
], ids=["zeros", "short", "block-size", "both-endian", "truncated", "tiny"])
def test_bad_iso(tmp_path: Path, raw: bytes, fragment: str) -> None:
    p = tmp_path / "bad.iso"
    p.write_bytes(raw)
    with pytest.raises(MediaError) as info:
        IsoImage.open(p)
    assert str(info.value).startswith(f"{p}: ") and fragment in str(info.value)
    assert p.read_bytes() == raw


@given(st.lists(st.tuples(st.integers(16 * S, 18 * S - 1), st.binary(min_size=1, max_size=6)),
                min_size=1, max_size=5))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_volume_descriptors(edits: list[tuple[int, bytes]]) -> None:
    raw = bytearray(build_iso(joliet=True))
    for off, data in edits:
        raw[off:off + len(data)] = data
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "f.iso"
        p.write_bytes(bytes(raw))

        async def go() -> None:
            try:
                img = IsoImage.open(p)
            except MediaError as exc:
                assert str(exc).startswith(f"{p}: ")
                return
            assert img.size % S == 0
            await img.pread(0, img.size)
            img.info()
            await img.close()
        asyncio.run(go())
        assert p.read_bytes() == bytes(raw)
