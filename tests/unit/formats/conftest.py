"""Fixtures for the VDI/VHD driver tests: external tools, file snapshots, a raw model."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class FileState:
    data: bytes
    mtime_ns: int


@pytest.fixture
def snapshot() -> Callable[[str | Path], FileState]:
    """``snapshot(path)``: the file's bytes and mtime, to prove nothing was written."""
    def take(path: str | Path) -> FileState:
        return FileState(Path(path).read_bytes(), os.stat(path).st_mtime_ns)
    return take


@pytest.fixture
def qemu_img(require_tool: Callable[[str], str]) -> str:
    return require_tool("qemu-img")


# ---- model-based runs: random writes/zeroes/trims/flushes/reopens against a bytearray ----
OpenFn = Callable[[Path], Any]


def op_strategy(size: int, unit: int) -> Any:
    """Operations sized around ``unit`` (the block size) so they hit block edges."""
    from hypothesis import strategies as st

    offset = st.one_of(st.integers(0, size - 1), st.integers(0, size // unit - 1).map(
        lambda b: b * unit), st.integers(1, size // unit).map(lambda b: b * unit - 512))
    length = st.one_of(st.integers(1, 3 * unit), st.sampled_from([512, unit, 2 * unit]))
    ranged = st.tuples(offset, length)
    return st.one_of(
        st.tuples(st.just("write"), ranged, st.integers(0, 2**32)),
        st.tuples(st.just("zero"), ranged, st.booleans()),
        st.tuples(st.just("trim"), ranged, st.just(0)),
        st.tuples(st.just("burst"), st.lists(ranged, min_size=2, max_size=5), st.integers()),
        st.sampled_from([("flush", None, 0), ("reopen", None, 0), ("crash", None, 0),
                         ("compact", None, 0), ("check", None, 0)]),
    )


class ModelRun:
    """Apply ops to an image and a bytearray; every read must match the model."""

    def __init__(self, path: Path, open_image: OpenFn, size: int, trim_reads_zero: bool) -> None:
        self.path, self.open_image, self.size = path, open_image, size
        self.trim_reads_zero = trim_reads_zero
        self.model = bytearray(size)
        self.img: Any = None

    def clip(self, rng: tuple[int, int]) -> tuple[int, int]:
        offset, length = rng
        return offset, min(length, self.size - offset)

    async def apply(self, name: str, arg: Any, extra: Any) -> None:
        import random

        img, model = self.img, self.model
        if name == "write":
            off, n = self.clip(arg)
            data = random.Random(extra).randbytes(n)
            await img.pwrite(off, data)
            model[off:off + n] = data
        elif name == "zero":
            off, n = self.clip(arg)
            await img.zero(off, n, may_trim=extra)
            model[off:off + n] = bytes(n)
        elif name == "trim":  # contents unspecified (NBD): must read back stable
            off, n = self.clip(arg)
            await img.trim(off, n)
            now = bytes(await img.pread(off, n))
            assert not self.trim_reads_zero or now == bytes(n) or now == model[off:off + n]
            model[off:off + n] = now
        elif name == "burst":
            await self.burst(arg, extra)
        else:
            await self.maintain(name)

    async def burst(self, ranges: list[tuple[int, int]], seed: int) -> None:
        """Concurrent writes to disjoint ranges: each lands whole."""
        import asyncio
        import random

        taken: list[tuple[int, int]] = []
        jobs = []
        for i, rng in enumerate(ranges):
            off, n = self.clip(rng)
            if any(off < e and s < off + n for s, e in taken):
                continue
            taken.append((off, off + n))
            data = random.Random(seed + i).randbytes(n)
            self.model[off:off + n] = data
            jobs.append(self.img.pwrite(off, data))
        await asyncio.gather(*jobs)

    async def maintain(self, name: str) -> None:
        import os

        if name == "flush":
            await self.img.flush()
        elif name in ("reopen", "crash"):
            if name == "crash":  # flushed, then the process dies: nothing else is written
                await self.img.flush()
                os.close(self.img.file.fd)
                self.img.file.fd = -1
            else:
                await self.img.close()
            self.img = self.open_image(self.path)
            report = self.img.check()
            assert report.clean, report
        elif name == "compact":
            await self.img.compact()
        elif name == "check":
            report = self.img.check()
            assert report.clean, report
        await self.verify()

    async def verify(self) -> None:
        assert bytes(await self.img.pread(0, self.size)) == bytes(self.model)

    async def run(self, ops: list[Any]) -> None:
        self.img = self.open_image(self.path)
        try:
            for op in ops:
                await self.apply(*op)
            await self.verify()
            await self.img.close()
            self.img = self.open_image(self.path)
            await self.verify()
            report = self.img.check()
            assert report.clean, report
        finally:
            await self.img.close()


async def concurrent_stress(img: Any, tasks: int, ops: int, seed: int) -> None:
    """Tasks own disjoint regions and write/zero/trim/read them while a flusher and a
    compactor run (which move blocks): every read must match the owner's model."""
    import asyncio
    import random

    region = img.size // tasks // 512 * 512
    models = [bytearray(region) for _ in range(tasks)]

    async def worker(t: int) -> None:
        rnd, base, model = random.Random(seed * 100 + t), t * region, models[t]
        for _ in range(ops):
            off = rnd.randrange(region // 512) * 512
            if rnd.random() < 0.5:  # whole blocks: frees and then moves at the next flush
                off = off // img.block_size * img.block_size
            n = min(region - off, rnd.choice([512, 4096, 65536, img.block_size]))
            kind = rnd.random()
            if kind < 0.6:
                data = rnd.randbytes(n)
                await img.pwrite(base + off, data)
                model[off:off + n] = data
            elif kind < 0.8:
                await img.zero(base + off, n)
                model[off:off + n] = bytes(n)
            elif kind < 0.9:
                await img.trim(base + off, n)
                model[off:off + n] = await img.pread(base + off, n)
            assert await img.pread(base + off, n) == model[off:off + n]

    async def housekeeping() -> None:
        for i in range(ops // 4):
            await asyncio.sleep(0)
            await (img.compact() if i % 7 == 6 else img.flush())

    await asyncio.gather(*(worker(t) for t in range(tasks)), housekeeping())
    for t in range(tasks):
        assert await img.pread(t * region, region) == models[t]
