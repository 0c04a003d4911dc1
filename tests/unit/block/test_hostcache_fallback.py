"""Host cache off where the filesystem refuses O_DIRECT: one warning per filesystem, then
buffered I/O with fdatasync (RawFile).  Linux >= 6.6 tmpfs accepts O_DIRECT, so besides
/dev/shm the refusal is simulated (EINVAL from open(2), or from the probe read)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_hostcache_direct import direct_dir, direct_io_works, make_image

from blockyard.block.hostcache import host_cache_in_force, open_raw
from blockyard.block.hostcache_direct import DirectFile
from blockyard.block.raw import RawFile

KiB = 1 << 10


@pytest.fixture(name="disk_dir")
def disk_dir_fixture() -> Iterator[Path]:
    yield from direct_dir()


async def test_tmpfs_falls_back_to_buffered_io_and_says_so_once(caplog, monkeypatch) -> None:
    import blockyard.block.hostcache as hc

    if not os.path.isdir("/dev/shm"):
        pytest.skip("SKIPPED LOUDLY: no /dev/shm here")
    if direct_io_works("/dev/shm"):  # Linux >= 6.6: tmpfs does O_DIRECT; then so do we
        d = Path(tempfile.mkdtemp(dir="/dev/shm"))
        try:
            make_image(d / "a", 64 * KiB)
            layer = open_raw(d / "a", host_cache=False)
            assert isinstance(layer, DirectFile)
            await layer.close()
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return
    monkeypatch.setattr(hc, "_warned_filesystems", set())
    d = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        make_image(d / "a", 64 * KiB)
        make_image(d / "b", 64 * KiB)
        with caplog.at_level(logging.DEBUG, logger="blockyard.hostcache"):
            a = open_raw(d / "a", host_cache=False)
            b = open_raw(d / "b", host_cache=False)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "direct I/O" in warnings[0].getMessage()
        assert type(a) is RawFile and type(b) is RawFile
        await a.pwrite(100, b"fallback")
        await a.flush()
        assert (d / "a").read_bytes()[100:108] == b"fallback"
        await a.close()
        await b.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def test_refused_o_direct_falls_back_once_per_filesystem(disk_dir: Path, caplog,
                                                             monkeypatch) -> None:
    """Since Linux 6.6 tmpfs accepts O_DIRECT, so the refusal is simulated here: open(2)
    with O_DIRECT fails with EINVAL, as on older tmpfs and some FUSE filesystems."""
    import blockyard.block.hostcache as hc
    from blockyard.block import hostcache_direct

    real_open = os.open

    def refusing_open(path, flags, *args):  # type: ignore[no-untyped-def]
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(hostcache_direct.os, "open", refusing_open)
    monkeypatch.setattr(hc, "_warned_filesystems", set())
    make_image(disk_dir / "a", 64 * KiB)
    make_image(disk_dir / "b", 64 * KiB)
    with caplog.at_level(logging.DEBUG, logger="blockyard.hostcache"):
        a = open_raw(disk_dir / "a", host_cache=False)
        b = open_raw(disk_dir / "b", host_cache=False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "does not support direct I/O" in warnings[0].getMessage()
    assert type(a) is RawFile and type(b) is RawFile and host_cache_in_force(a)
    await a.pwrite(100, b"fallback")
    await a.flush()
    assert (disk_dir / "a").read_bytes()[100:108] == b"fallback"
    await a.close()
    await b.close()


async def test_o_direct_accepted_but_failing_io_also_falls_back(disk_dir: Path,
                                                                 monkeypatch) -> None:
    from blockyard.block import hostcache_direct

    def failing_read(*args: object) -> bytearray:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(hostcache_direct, "read_aligned_sync", failing_read)
    make_image(disk_dir / "a", 64 * KiB)
    layer = open_raw(disk_dir / "a", host_cache=False)
    assert type(layer) is RawFile
    await layer.close()
