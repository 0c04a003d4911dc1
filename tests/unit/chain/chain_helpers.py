"""Helpers for the chain tests: images with known content, file digests, full reads."""

from __future__ import annotations

import hashlib
from pathlib import Path

from blockyard.block.chain_facts import ParentFacts, facts_of
from blockyard.block.chain_link import create_child
from blockyard.block.formats import create_image, open_image
from blockyard.block.formats.base import ImageLayer
from blockyard.block.layer import Layer

MiB = 1 << 20
SIZE = 4 * MiB
EXT = {"vdi": "vdi", "vhd": "vhd", "vmdk": "vmdk", "raw": "img"}


async def make_image(path: Path, fmt: str, chunks: dict[int, bytes] | None = None,
                     size: int = SIZE) -> Path:
    img = create_image(path, size, fmt)
    for off, data in (chunks or {}).items():
        await img.pwrite(off, data)
    await img.close()
    return path


async def facts(path: Path) -> ParentFacts:
    img = open_image(path, read_only=True)
    try:
        return facts_of(img)
    finally:
        await img.close()


async def make_child(path: Path, parent: Path, fmt: str) -> Path:
    child: ImageLayer = create_child(str(path), await facts(parent), fmt)
    await child.close()
    return path


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


async def read_all(layer: Layer) -> bytes:
    return bytes(await layer.pread(0, layer.size))
