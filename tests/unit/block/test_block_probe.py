"""Probing picks a driver by content: magic at the start, or a footer at the end."""

from __future__ import annotations

import pytest

from blockyard.block.formats import create_image, probe


@pytest.mark.parametrize(("fmt", "variant"), [
    ("vdi", "dynamic"), ("vdi", "fixed"), ("vhd", "dynamic"), ("vhd", "fixed"),
    ("vmdk", "dynamic"), ("parallels", "dynamic"), ("raw", "dynamic"),
])
async def test_probe_finds_the_format_we_made(tmp_path, fmt: str, variant: str) -> None:
    path = tmp_path / f"disk.{fmt}"
    layer = create_image(path, 4 << 20, fmt, variant=variant)
    await layer.close()
    assert probe(path) == fmt


def test_extension_does_not_matter(tmp_path) -> None:
    path = tmp_path / "looks-like.vdi"
    path.write_bytes(b"\x01" * 4096)
    assert probe(path) == "raw"
