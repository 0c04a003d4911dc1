"""Host cache off bypasses the page cache: mincore(2) shows none of the image's pages
resident after repeated reads and flushed writes through DirectFile, while the same reads
through RawFile (host cache on) fill it -- the control that shows the probe works."""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_hostcache_direct import direct_dir, make_image

from blockyard.block.hostcache_direct import DirectFile
from blockyard.block.raw import RawFile

MiB = 1 << 20


@pytest.fixture(name="disk_dir")
def disk_dir_fixture() -> Iterator[Path]:
    yield from direct_dir()


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


def resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache, by mincore(2) over a fresh mapping."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value)
        try:
            vec = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
            assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(v & 1 for v in vec)
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def test_reads_and_writes_bypass_the_page_cache(disk_dir: Path) -> None:
    path = disk_dir / "d"
    make_image(path, 4 * MiB)
    evict(path)
    if resident_pages(path) > 16:
        pytest.skip("SKIPPED LOUDLY: the kernel keeps this file cached after FADV_DONTNEED")
    layer = DirectFile(path, writeout_delay=3600)
    try:
        for _ in range(3):  # the same range, again and again: never cached
            await layer.pread(0, 4 * MiB)
            await layer.pread(12345, 100_000)
        await layer.pwrite(MiB, os.urandom(MiB))
        await layer.pwrite(3, b"unaligned")
        await layer.flush()
        assert resident_pages(path) == 0
    finally:
        await layer.close()
    buffered = RawFile(path)  # the control: the same reads with the host cache on
    try:
        await buffered.pread(0, 4 * MiB)
        assert resident_pages(path) >= 4 * MiB // mmap.PAGESIZE - 16
    finally:
        await buffered.close()
