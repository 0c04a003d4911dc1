"""Property test: random writes, zeroes, trims, flushes and reopens of every
writable VMDK variant against a bytearray model."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockyard.block.formats import create_image, open_image

GRAIN = 4096
SIZE = 3 * 65536 + 3 * 4096  # several GTs of 512 x 4 KiB ... and a short last extent
CONFIGS = {
    "dynamic": ("dynamic", {"grain_size": GRAIN}),
    "dynamic-zeroed-lazy": ("dynamic", {"grain_size": GRAIN, "zeroed_grain": True,
                                        "lazy_tables": True}),
    "split2g": ("split2g", {"grain_size": GRAIN, "extent_size": 65536}),
    "fixed": ("fixed", {}),
    "split2g-fixed": ("split2g-fixed", {"extent_size": 65536}),
}

offsets = st.integers(0, SIZE - 1)
lengths = st.integers(1, 3 * GRAIN + 100)
op = st.one_of(
    st.tuples(st.just("write"), offsets, lengths, st.integers(1, 255)),
    st.tuples(st.just("zero"), offsets, lengths, st.booleans()),
    st.tuples(st.just("trim"), offsets, lengths, st.just(0)),
    st.tuples(st.just("flush"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("reopen"), st.just(0), st.just(0), st.just(0)),
)


async def apply(path: Path, config: str, ops: list[tuple[str, int, int, int]]) -> None:
    variant, opts = CONFIGS[config]
    img = create_image(path, SIZE, "vmdk", variant, **opts)
    model = bytearray(SIZE)
    for name, off, n, arg in ops:
        n = min(n, SIZE - off)
        if name == "write":
            data = bytes([arg]) * n
            await img.pwrite(off, data)
            model[off:off + n] = data
        elif name in ("zero", "trim"):
            if name == "zero":
                await img.zero(off, n, may_trim=bool(arg))
            else:
                await img.trim(off, n)
            model[off:off + n] = bytes(n)
        elif name == "flush":
            await img.flush()
        else:
            await img.close()
            img = open_image(path)
    assert bytes(await img.pread(0, SIZE)) == model
    await img.close()
    img = open_image(path, read_only=True)
    assert bytes(await img.pread(0, SIZE)) == model
    extents = await img.extents(0, SIZE)
    assert sum(e.length for e in extents) == SIZE
    pos = 0
    for e in extents:  # a range reported as zero reads as zero
        if e.flags & 2:
            assert not any(model[pos:pos + e.length])
        pos += e.length
    report = img.check()
    assert not report.errors, report.errors
    assert not img.info().dirty
    await img.close()


@pytest.mark.parametrize("config", sorted(CONFIGS))
@given(ops=st.lists(op, max_size=25))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_operations_match_model(config: str, ops: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(apply(Path(d) / "m.vmdk", config, ops))


@pytest.mark.soak
@pytest.mark.parametrize("config", sorted(CONFIGS))
@given(ops=st.lists(op, max_size=120))
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_operations_match_model_soak(config: str,
                                            ops: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(apply(Path(d) / "m.vmdk", config, ops))


async def test_concurrent_disjoint_writes_and_zeroes(tmp_path: Path) -> None:
    """Many requests in flight at once on fresh grains (allocation under the lock)."""
    img = create_image(tmp_path / "c.vmdk", SIZE, "vmdk", grain_size=GRAIN, zeroed_grain=True)
    model = bytearray(SIZE)
    chunk = 1500  # deliberately not grain aligned: neighbours share grains
    jobs = []
    for i, off in enumerate(range(0, SIZE - chunk, chunk)):
        if i % 5 == 4:
            jobs.append(img.zero(off, chunk))
        else:
            data = bytes([i % 250 + 1]) * chunk
            model[off:off + chunk] = data
            jobs.append(img.pwrite(off, data))
    await asyncio.gather(*jobs)
    assert bytes(await img.pread(0, SIZE)) == model
    await img.close()
    img = open_image(tmp_path / "c.vmdk")
    assert bytes(await img.pread(0, SIZE)) == model and not img.check().errors
    await img.close()
