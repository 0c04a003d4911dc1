"""Property test: random writes, zeroes, trims, flushes, reopens and compactions on VHD
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

from blockyard.block.formats import vhd_layout as V
from blockyard.block.formats.vhd import VhdImage
from blockyard.block.ram import RamDisk

from .conftest import ModelRun, op_strategy

BLOCK = 64 << 10
SIZE = 16 * BLOCK - 1536  # the last block is partial
PATTERN = bytes(i % 251 for i in range(SIZE))


def make(path: Path, variant: str) -> Any:
    VhdImage.create(path, SIZE, variant="fixed" if variant == "fixed" else "dynamic",
                    block_size=BLOCK)
    if variant != "diff":
        return lambda p: VhdImage.open(p)
    raw = bytearray(path.read_bytes())
    footer, _ = V.parse_footer(bytes(raw[:512]))
    header, _ = V.parse_dyn_header(bytes(raw[512:1536]))
    assert footer and header
    footer.disk_type, header.parent_uuid = V.DIFF, uuid.uuid4().bytes
    raw[:512] = raw[-512:] = footer.pack()
    raw[512:1536] = header.pack()
    path.write_bytes(bytes(raw))
    parent = RamDisk(SIZE)
    parent.data[:] = PATTERN

    def open_diff(p: Path) -> VhdImage:
        img = VhdImage.open(p)
        img.parent = parent
        return img
    return open_diff


def run_case(variant: str, ops: list[Any]) -> None:
    if variant == "fixed":
        ops = [op for op in ops if op[0] != "compact"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.vhd"
        run = ModelRun(path, make(path, variant), SIZE, trim_reads_zero=False)
        if variant == "diff":
            run.model[:] = PATTERN
        asyncio.run(run.run(ops))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(variant=st.sampled_from(["dynamic", "fixed", "diff"]),
       ops=st.lists(op_strategy(SIZE, BLOCK), max_size=30))
def test_vhd_matches_the_model(variant: str, ops: list[Any]) -> None:
    run_case(variant, ops)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(variant=st.sampled_from(["dynamic", "fixed", "diff"]),
       ops=st.lists(op_strategy(SIZE, BLOCK), max_size=120))
def test_vhd_matches_the_model_soak(variant: str, ops: list[Any]) -> None:
    run_case(variant, ops)
