"""The Layer contract, run over every leaf layer: range checks, read-only,
zero/trim semantics, extents that add up, and a random model test."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockyard.block.layer import HOLE, ZERO, Layer
from blockyard.block.ram import RamDisk
from blockyard.block.raw import RawFile
from blockyard.errors import BlockError

SIZE = 1 << 20


@pytest.fixture(params=["ram", "raw"])
def layer(request, tmp_path):
    if request.param == "ram":
        yield RamDisk(SIZE)
        return
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(SIZE)
    lay = RawFile(path, inline_max=8192)  # small and large requests take both paths
    yield lay
    os.close(lay.fd) if lay.fd >= 0 else None


async def test_write_read_round_trip(layer: Layer) -> None:
    await layer.pwrite(4096, b"x" * 100_000)
    assert await layer.pread(4096, 100_000) == b"x" * 100_000
    assert await layer.pread(0, 4096) == bytes(4096)


@pytest.mark.parametrize("op", ["pread", "extents", "cache"])
async def test_reads_past_end_are_einval(layer: Layer, op: str) -> None:
    with pytest.raises(BlockError) as err:
        await getattr(layer, op)(SIZE - 10, 11)
    assert err.value.errno == errno.EINVAL


async def test_writes_past_end_are_enospc(layer: Layer) -> None:
    with pytest.raises(BlockError) as err:
        await layer.pwrite(SIZE - 1, b"ab")
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(BlockError) as err:
        await layer.zero(SIZE, 1)
    assert err.value.errno == errno.ENOSPC


async def test_negative_offset_refused(layer: Layer) -> None:
    with pytest.raises(BlockError):
        await layer.pread(-1, 1)


async def test_read_only_refuses_writes(layer: Layer) -> None:
    layer.read_only = True
    for call in (layer.pwrite(0, b"a"), layer.trim(0, 4096), layer.zero(0, 4096)):
        with pytest.raises(BlockError) as err:
            await call
        assert err.value.errno == errno.EPERM


async def test_zero_with_trim_makes_a_hole(layer: Layer) -> None:
    await layer.pwrite(0, b"\xff" * 65536)
    await layer.zero(0, 65536, may_trim=True)
    assert await layer.pread(0, 65536) == bytes(65536)
    ext = await layer.extents(0, 65536)
    assert ext[0].flags & ZERO
    assert sum(e.length for e in ext) == 65536


async def test_zero_without_trim_reads_zero(layer: Layer) -> None:
    await layer.pwrite(0, b"\xff" * 8192)
    await layer.zero(0, 8192, may_trim=False)
    assert await layer.pread(0, 8192) == bytes(8192)


async def test_extents_cover_request_exactly(layer: Layer) -> None:
    await layer.pwrite(65536, b"d" * 4096)
    ext = await layer.extents(0, SIZE)
    assert sum(e.length for e in ext) == SIZE
    pos = 0
    for e in ext:
        if pos <= 65536 < pos + e.length:
            assert e.flags == 0
        pos += e.length
    assert ext[0].flags == HOLE | ZERO


async def test_flush_and_fua(layer: Layer) -> None:
    await layer.pwrite(0, b"f" * 512, fua=True)
    await layer.flush()
    assert await layer.pread(0, 512) == b"f" * 512


ops = st.lists(st.tuples(st.sampled_from(["w", "t", "z"]), st.integers(0, SIZE - 1),
                         st.integers(1, 70_000)), max_size=25)


@settings(max_examples=30, deadline=None)
@given(ops)
def test_random_ops_match_a_model(tmp_path_factory, ops) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    path = tmp_path_factory.mktemp("model") / "m.raw"
    with open(path, "wb") as f:
        f.truncate(SIZE)

    async def run() -> None:
        model = bytearray(SIZE)
        for lay in (RamDisk(SIZE), RawFile(path, inline_max=16384)):
            model[:] = bytes(SIZE)
            for i, (op, off, n) in enumerate(ops):
                n = min(n, SIZE - off)
                if op == "w":
                    data = bytes([i % 251 + 1]) * n
                    await lay.pwrite(off, data)
                    model[off:off + n] = data
                else:
                    if op == "t":
                        await lay.trim(off, n)
                    else:
                        await lay.zero(off, n, may_trim=True)
                    model[off:off + n] = bytes(n)
            assert await lay.pread(0, SIZE) == bytes(model)
            await lay.close()

    asyncio.run(run())
