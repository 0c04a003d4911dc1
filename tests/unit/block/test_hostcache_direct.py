"""Host cache off: DirectFile on a real disk (O_DIRECT), against a model; the write-back
cache's rules (coalescing, back-pressure, FUA, write-out timer, no stale reads); the
tmpfs fallback; and proof that reads and writes bypass the page cache (mincore)."""

from __future__ import annotations

import asyncio
import errno
import mmap
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockyard.block.hostcache import (
    host_cache_in_force,
    open_raw,
    parse_host_cache,
    write_cache_control,
)
from blockyard.block.hostcache_direct import DirectFile
from blockyard.block.layer import HOLE
from blockyard.block.raw import RawFile
from blockyard.errors import ConfigError
from blockyard.transport.nbd_ops import export_flags

KiB, MiB = 1 << 10, 1 << 20


def direct_io_works(directory: str) -> bool:
    fd, probe = tempfile.mkstemp(dir=directory)
    try:
        os.write(fd, bytes(4096))
        os.close(fd)
        try:
            dfd = os.open(probe, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            return False
        try:
            with mmap.mmap(-1, 4096) as buf:
                os.preadv(dfd, [buf], 0)
            return True
        except OSError:
            return False
        finally:
            os.close(dfd)
    finally:
        os.unlink(probe)


def direct_dir() -> Iterator[Path]:
    """A directory on a filesystem that does O_DIRECT (/var/tmp, not a tmpfs /tmp)."""
    root = os.environ.get("BLOCKYARD_DIRECT_DIR", "/var/tmp")
    if not direct_io_works(root):
        pytest.skip(f"SKIPPED LOUDLY: {root} does not support O_DIRECT; "
                    "set BLOCKYARD_DIRECT_DIR to a directory on a real disk")
    path = Path(tempfile.mkdtemp(prefix="blockyard-test-", dir=root))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(name="disk_dir")
def disk_dir_fixture() -> Iterator[Path]:
    yield from direct_dir()


def make_image(path: Path, size: int, seed: int = 1) -> bytearray:
    data = bytearray(random.Random(seed).randbytes(size))
    path.write_bytes(data)
    return data


def on_disk(path: Path) -> bytes:
    return path.read_bytes()


async def drain(layer: DirectFile) -> None:
    """Wait (functionally, with a generous bound) until the write cache is empty."""
    for _ in range(1000):
        if not layer._dirty and layer._flushing is None and layer._background is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("write cache never drained")


# ---- the policy entry point ---------------------------------------------------------------
def test_parse_host_cache() -> None:
    assert parse_host_cache("on") and parse_host_cache("YES") and parse_host_cache(True)
    assert not parse_host_cache("off") and not parse_host_cache("0")
    with pytest.raises(ConfigError):
        parse_host_cache("sometimes")


async def test_open_raw_picks_the_layer(disk_dir: Path) -> None:
    make_image(disk_dir / "d", 64 * KiB)
    on = open_raw(disk_dir / "d", host_cache=True)
    off = open_raw(disk_dir / "d", host_cache=False)
    try:
        assert type(on) is RawFile and host_cache_in_force(on)
        assert isinstance(off, DirectFile) and not host_cache_in_force(off)
        assert off.sync_pread is None and off.sendfile_fd is None  # no transport bypass
        assert off.write_cache_enabled
        assert export_flags(off, False) == export_flags(on, False)
        assert export_flags(off, True) == export_flags(on, True)
        assert off.limits.preferred == 4096
    finally:
        await on.close()
        await off.close()


# ---- data correctness ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
async def test_random_operations_match_a_model(disk_dir: Path, seed: int) -> None:
    rng = random.Random(seed)
    size = 256 * KiB + rng.choice([0, 1000, 4095])  # an unaligned tail too
    model = make_image(disk_dir / "d", size, seed)
    layer = DirectFile(disk_dir / "d", cache_limit=64 * KiB, writeout_delay=3600)
    try:
        for _ in range(150):
            op = rng.choice("wwwwwrrrffztx")
            off = rng.randrange(size)
            n = min(rng.choice([1, 512, 4096, 5000, 20000, 70000]), size - off)
            if op == "w":
                data = rng.randbytes(n)
                await layer.pwrite(off, data, fua=rng.random() < 0.1)
                model[off:off + n] = data
            elif op == "r":
                assert await layer.pread(off, n) == model[off:off + n]
            elif op == "f":
                await layer.flush()
            elif op in "zt":
                await (layer.zero(off, n) if op == "z" else layer.trim(off, n))
                model[off:off + n] = bytes(n)
            else:
                await layer._writeout()
        assert await layer.pread(0, size) == model
        await layer.flush()
        assert on_disk(disk_dir / "d") == model
    finally:
        await layer.close()
    assert os.path.getsize(disk_dir / "d") == size


async def test_concurrent_requests_overlap_and_stay_correct(disk_dir: Path) -> None:
    size = 4 * MiB
    model = make_image(disk_dir / "d", size)
    layer = DirectFile(disk_dir / "d", cache_limit=256 * KiB, writeout_delay=0.01)
    rng = random.Random(7)
    try:
        async def writer(region: int) -> None:
            base = region * 256 * KiB
            for _ in range(20):
                off = base + rng.randrange(256 * KiB - 9000)
                data = rng.randbytes(rng.choice([100, 4096, 9000]))
                await layer.pwrite(off, data)
                model[off:off + len(data)] = data
                assert await layer.pread(off, len(data)) == data  # read-your-write

        async def reader() -> None:  # the upper half is never written: always stable
            for _ in range(30):
                off = 2 * MiB + rng.randrange(2 * MiB - 70000)
                assert await layer.pread(off, 70000) == model[off:off + 70000]

        await asyncio.gather(*(writer(i) for i in range(8)), reader(), reader())
        await layer.flush()
        assert on_disk(disk_dir / "d") == model
    finally:
        await layer.close()


async def test_reads_during_a_writeout_never_return_stale_data(disk_dir: Path) -> None:
    model = make_image(disk_dir / "d", 8 * MiB)
    layer = DirectFile(disk_dir / "d", writeout_delay=3600)
    try:
        for round_ in range(5):
            data = bytes([round_ + 1]) * (3 * MiB + 123)
            await layer.pwrite(1000, data)
            model[1000:1000 + len(data)] = data
            writeout = asyncio.ensure_future(layer._writeout())
            reads = [layer.pread(o, 256 * KiB) for o in range(0, 4 * MiB, 128 * KiB)]
            results = await asyncio.gather(*reads)
            await writeout
            for o, got in zip(range(0, 4 * MiB, 128 * KiB), results, strict=True):
                assert got == model[o:o + 256 * KiB], f"stale read at {o} in round {round_}"
        assert layer._retired == [] and not layer._readers
    finally:
        await layer.close()


async def test_writes_are_cached_coalesced_and_bounded(disk_dir: Path) -> None:
    make_image(disk_dir / "d", 2 * MiB)
    before = on_disk(disk_dir / "d")
    layer = DirectFile(disk_dir / "d", cache_limit=64 * KiB, writeout_delay=3600)
    try:
        await layer.pwrite(0, b"a" * 4096)
        await layer.pwrite(4096, b"b" * 4096)
        assert len(layer._dirty) == 1 and layer._dirty.nbytes == 8192  # coalesced
        assert on_disk(disk_dir / "d") == before  # acknowledged, still only in our cache
        peak = 0
        for i in range(256):  # 1 MiB through a 64 KiB cache
            await layer.pwrite(8192 + i * 4096, bytes([i]) * 4096)
            peak = max(peak, layer._dirty.nbytes)
        assert peak <= 64 * KiB
        await layer.flush()
        disk = on_disk(disk_dir / "d")
        assert disk[:8192] == b"a" * 4096 + b"b" * 4096
        assert disk[8192 + 255 * 4096:8192 + 256 * 4096] == bytes([255]) * 4096
    finally:
        await layer.close()


async def test_many_writers_share_a_small_cache_in_order(disk_dir: Path) -> None:
    model = make_image(disk_dir / "d", 4 * MiB)
    layer = DirectFile(disk_dir / "d", cache_limit=64 * KiB, writeout_delay=3600)
    peak = 0

    async def writer(w: int) -> None:
        nonlocal peak
        for k in range(40):
            off = (w * 40 + k) * 6000  # unaligned, never overlapping another writer
            data = bytes([w + 1]) * 6000
            await layer.pwrite(off, data)
            model[off:off + 6000] = data
            peak = max(peak, layer._held())

    try:
        await asyncio.gather(*(writer(w) for w in range(16)))
        assert peak <= 64 * KiB and not layer._room_queue
        assert await layer.pread(0, 4 * MiB) == model
        await layer.flush()
        assert on_disk(disk_dir / "d") == model
    finally:
        await layer.close()


async def test_fua_and_large_writes_go_straight_to_disk(disk_dir: Path) -> None:
    make_image(disk_dir / "d", 32 * MiB)
    layer = DirectFile(disk_dir / "d", writeout_delay=3600)
    try:
        await layer.pwrite(0, b"old" * 1000)
        await layer.pwrite(10, b"FUA!", fua=True)  # replaces part of a cached extent
        assert on_disk(disk_dir / "d")[10:14] == b"FUA!"
        assert await layer.pread(0, 20) == (b"old" * 1000)[:10] + b"FUA!" + (b"old" * 10)[14:20]
        big = os.urandom(5 * MiB + 77)
        await layer.pwrite(3 * MiB + 5, big)
        assert on_disk(disk_dir / "d")[3 * MiB + 5:8 * MiB + 82] == big
        assert not layer._dirty.overlaps(3 * MiB + 5, len(big))
        await layer.flush()
        assert on_disk(disk_dir / "d")[:10] == b"oldoldoldo"
    finally:
        await layer.close()


async def test_the_timer_writes_out_without_a_flush(disk_dir: Path) -> None:
    make_image(disk_dir / "d", MiB)
    layer = DirectFile(disk_dir / "d", writeout_delay=0.05)
    try:
        await layer.pwrite(5000, b"timer")
        assert on_disk(disk_dir / "d")[5000:5005] != b"timer"
        await drain(layer)
        assert on_disk(disk_dir / "d")[5000:5005] == b"timer"
    finally:
        await layer.close()


async def test_turning_the_write_cache_off_writes_through(disk_dir: Path) -> None:
    make_image(disk_dir / "d", MiB)
    layer = DirectFile(disk_dir / "d", writeout_delay=3600)
    try:
        await layer.pwrite(0, b"cached")
        layer.set_write_cache(False)
        assert not layer.write_cache_enabled
        await drain(layer)
        assert on_disk(disk_dir / "d")[:6] == b"cached"
        await layer.pwrite(100, b"through")
        assert on_disk(disk_dir / "d")[100:107] == b"through" and not layer._dirty
        layer.set_write_cache(True)
        assert layer.write_cache_enabled
    finally:
        await layer.close()
    no_cache = DirectFile(disk_dir / "d", cache_limit=0)
    assert not no_cache.write_cache_enabled
    await no_cache.close()


async def test_write_cache_control_is_found_under_filters(disk_dir: Path) -> None:
    from blockyard.block.throttle import ThrottleGroup, ThrottleLayer

    make_image(disk_dir / "d", MiB)
    direct = DirectFile(disk_dir / "d", writeout_delay=3600)
    top = ThrottleLayer(direct, ThrottleGroup("g", 0), "s")
    enabled, setter = write_cache_control(top)
    assert enabled and setter is not None and top.write_cache_enabled
    setter(False)
    assert not direct.write_cache_enabled and not top.write_cache_enabled
    assert write_cache_control(top)[0] is False
    await direct.close()
    buffered = RawFile(disk_dir / "d")
    assert write_cache_control(buffered) == (True, None)
    await buffered.close()


async def test_extents_see_cached_writes_in_holes(disk_dir: Path) -> None:
    path = disk_dir / "sparse"
    with open(path, "wb") as f:
        f.truncate(MiB)
    layer = DirectFile(path, writeout_delay=3600)
    try:
        assert (await layer.extents(0, MiB))[0].flags & HOLE
        await layer.pwrite(64 * KiB, b"x" * 4096)
        ext = await layer.extents(64 * KiB, 4096)
        assert ext[0].flags == 0
        assert await layer.pread(64 * KiB, 4096) == b"x" * 4096
    finally:
        await layer.close()


async def test_zero_and_trim_drop_cached_data(disk_dir: Path) -> None:
    make_image(disk_dir / "d", MiB)
    layer = DirectFile(disk_dir / "d", writeout_delay=3600)
    try:
        await layer.pwrite(0, b"\xff" * 65536)
        await layer.zero(4096, 8192)
        await layer.trim(32768, 4096)
        expect = b"\xff" * 4096 + bytes(8192) + b"\xff" * (32768 - 12288) + bytes(4096)
        assert await layer.pread(0, 36864) == expect
        await layer.flush()
        assert on_disk(disk_dir / "d")[:36864] == expect
    finally:
        await layer.close()


async def test_read_only(disk_dir: Path) -> None:
    data = make_image(disk_dir / "d", 100_000)
    layer = open_raw(disk_dir / "d", read_only=True, host_cache=False)
    try:
        assert isinstance(layer, DirectFile)
        assert await layer.pread(99_000, 1000) == data[99_000:]
        with pytest.raises(Exception) as err:
            await layer.pwrite(0, b"no")
        assert getattr(err.value, "errno", None) == errno.EPERM
    finally:
        await layer.close()


async def test_close_writes_the_cache_out(disk_dir: Path) -> None:
    make_image(disk_dir / "d", MiB)
    layer = DirectFile(disk_dir / "d", writeout_delay=3600)
    await layer.pwrite(777, b"closing")
    await layer.close()
    assert on_disk(disk_dir / "d")[777:784] == b"closing"
