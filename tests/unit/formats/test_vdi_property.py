"""Property test: random writes, zeroes, trims, flushes, reopens and compactions on VDI
images (dynamic, fixed, differencing over a RAM parent) match a bytearray model."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockyard.block.formats import vdi_layout as L
from blockyard.block.formats.vdi import VdiImage
from blockyard.block.ram import RamDisk

from .conftest import ModelRun, op_strategy

BLOCK = 64 << 10
SIZE = 16 * BLOCK - 1536  # the last block is partial


def make(path: Path, variant: str) -> Any:
    """Create the image; return an opener (a diff image gets a RAM parent with a pattern)."""
    VdiImage.create(path, SIZE, variant="fixed" if variant == "fixed" else "dynamic",
                    block_size=BLOCK)
    if variant != "diff":
        return lambda p: VdiImage.open(p)
    h = L.parse_header(path.read_bytes()[:0x1D8], str(path))
    h.image_type, h.uuid_link = L.TYPE_DIFF, uuid.uuid4()
    with open(path, "r+b") as f:
        f.write(h.pack())
    parent = RamDisk(SIZE)
    parent.data[:] = bytes(i % 251 for i in range(SIZE))

    def open_diff(p: Path) -> VdiImage:
        img = VdiImage.open(p)
        img.parent = parent
        return img
    return open_diff


def run_case(variant: str, ops: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.vdi"
        opener = make(path, variant)
        run = ModelRun(path, opener, SIZE, trim_reads_zero=variant != "diff")
        if variant == "diff":
            run.model[:] = bytes(i % 251 for i in range(SIZE))
        asyncio.run(run.run(ops))


OPS = st.lists(op_strategy(SIZE, BLOCK), max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variant=st.sampled_from(["dynamic", "fixed", "diff"]), ops=OPS)
def test_vdi_matches_the_model(variant: str, ops: list[Any]) -> None:
    if variant == "fixed":
        ops = [op for op in ops if op[0] != "compact"]  # fixed images are not compacted
    run_case(variant, ops)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(variant=st.sampled_from(["dynamic", "fixed", "diff"]),
       ops=st.lists(op_strategy(SIZE, BLOCK), max_size=120))
def test_vdi_matches_the_model_soak(variant: str, ops: list[Any]) -> None:
    if variant == "fixed":
        ops = [op for op in ops if op[0] != "compact"]
    run_case(variant, ops)
