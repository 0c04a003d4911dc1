"""Model-based test of snapshots on a served disk: random writes, zeroes, trims and
snapshot take / restore / delete through the live SwapLayer, against bytearray models of
the current state and of what every snapshot holds, for each format."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockyard.block.chain_swap import SwapLayer
from blockyard.control.live import LiveServer
from blockyard.errors import ConflictError
from blockyard.media import attach_ops, ops
from blockyard.media import snapshot_store as store
from blockyard.media.chain_open import open_chain
from blockyard.media.context import Context
from blockyard.media.registry import Registry
from blockyard.media.snapshot_delete import delete_snapshot
from blockyard.media.snapshots import snapshot_restore, snapshot_take
from blockyard.transport.nbd_server import ExportTable, NbdServer

MiB = 1 << 20
SIZE = 4 * MiB
offsets = st.integers(0, SIZE - 1)
lengths = st.integers(1, MiB + MiB // 2)
op = st.one_of(
    st.tuples(st.just("write"), offsets, lengths, st.integers(1, 255)),
    st.tuples(st.just("write"), offsets, st.integers(1, 4096), st.integers(1, 255)),
    st.tuples(st.just("zero"), offsets, lengths, st.just(0)),
    st.tuples(st.just("trim"), offsets, lengths, st.just(0)),
    st.tuples(st.just("take"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("restore"), st.integers(0, 99), st.just(0), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 99), st.just(0), st.just(0)),
)


class Harness:
    def __init__(self, tmp: Path, fmt: str) -> None:
        self.tmp, self.fmt = tmp, fmt
        self.reg = Registry(tmp / "state")
        self.nbd = NbdServer(ExportTable())
        self.ctx = Context(self.reg, tmp / "state", LiveServer(self.reg, self.nbd, grace=1))
        self.model = bytearray(SIZE)
        self.snaps: dict[str, bytearray] = {}
        self.order: list[str] = []

    async def start(self) -> SwapLayer:
        ext = "img" if self.fmt == "raw" else self.fmt
        await ops.media_add(self.ctx, str(self.tmp / f"disk.{ext}"), create_size=SIZE,
                            format=self.fmt)
        await attach_ops.controller_add(self.ctx, "c", "sata")
        await attach_ops.attach(self.ctx, "c", f"disk.{ext}")
        self.name = f"disk.{ext}"
        layer = self.ctx.live.open_layer(self.reg.media()[0].uuid)  # type: ignore[union-attr]
        assert isinstance(layer, SwapLayer)
        return layer

    async def step(self, swap: SwapLayer, name: str, off: int, n: int, arg: int) -> None:
        n = min(n, SIZE - off)
        if name == "write":
            await swap.pwrite(off, bytes([arg]) * n)
            self.model[off:off + n] = bytes([arg]) * n
        elif name == "zero":
            await swap.zero(off, n)
            self.model[off:off + n] = bytes(n)
        elif name == "trim":
            await swap.trim(off, n)
            got = bytes(await swap.pread(off, n))  # trimmed bytes read as zero or as before
            assert all(g in (0, m) for g, m in zip(got, self.model[off:off + n], strict=True))
            self.model[off:off + n] = got
        elif name == "take":
            r = await snapshot_take(self.ctx, self.name)
            self.snaps[r["snapshot"]] = bytearray(self.model)
            self.order.append(r["snapshot"])
        elif self.order:
            uid = self.order[off % len(self.order)]
            if name == "restore":
                await snapshot_restore(self.ctx, self.name, uid)
                self.model = bytearray(self.snaps[uid])
            else:
                try:
                    await delete_snapshot(self.ctx, self.name, uid)
                except ConflictError as exc:  # a branch point: refused, nothing changed
                    assert "branches" in str(exc)
                    return
                del self.snaps[uid]
                self.order.remove(uid)

    async def check_snapshots(self) -> None:
        disk = store.load(self.reg, self.reg.resolve(self.name))
        assert sorted(s.uuid for s in disk.snaps) == sorted(self.snaps)
        for s in disk.snaps:
            frozen = open_chain(self.ctx.lookup(s.medium_uuid), self.ctx.lookup, read_only=True)
            assert bytes(await frozen.pread(0, SIZE)) == self.snaps[s.uuid], s.name
            await frozen.close()
        managed = {m.location for m in disk.media[1:]}
        folder = store.snapshot_dir(disk.root, self.reg.state_dir)
        on_disk = {str(folder / f) for f in os.listdir(folder)} if folder.exists() else set()
        assert on_disk == managed  # no file left behind, none missing
        assert self.reg.integrity() == []


async def run(tmp: Path, fmt: str, ops_: list[tuple[str, int, int, int]]) -> None:
    h = Harness(tmp, fmt)
    swap = await h.start()
    try:
        for step in ops_:
            await h.step(swap, *step)
            assert bytes(await swap.pread(0, SIZE)) == h.model, step
        await h.check_snapshots()
    finally:
        await attach_ops.detach(h.ctx, "c", 0)
        await h.nbd.stop(grace=1)
        h.reg.close()


@pytest.mark.parametrize("fmt", ["vdi", "vhd", "vmdk", "raw"])
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops_=st.lists(op, min_size=1, max_size=24))
def test_snapshots_against_a_model(fmt: str, ops_: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp), fmt, ops_))


@pytest.mark.soak
@pytest.mark.parametrize("fmt", ["vdi", "vhd", "vmdk", "raw"])
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops_=st.lists(op, min_size=1, max_size=60))
def test_snapshots_against_a_model_soak(fmt: str,
                                        ops_: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp), fmt, ops_))


def test_a_fixed_scenario_touches_every_path() -> None:
    scenario = [("write", 0, 3 * MiB, 7), ("take", 0, 0, 0), ("write", 100, 5000, 8),
                ("trim", 2 * MiB, MiB, 0), ("take", 0, 0, 0), ("zero", MiB - 1, 3, 0),
                ("restore", 0, 0, 0), ("write", 3 * MiB, 4096, 9), ("take", 0, 0, 0),
                ("delete", 1, 0, 0), ("delete", 0, 0, 0), ("restore", 0, 0, 0),
                ("delete", 0, 0, 0)]
    for fmt in ("vdi", "vhd", "vmdk", "raw"):
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(run(Path(tmp), fmt, scenario))
