"""qemu-io against blockyard: pattern writes and reads, zero writes, discard, FUA, flush.

qemu-io exits non-zero when a ``read -P`` finds the wrong pattern, and every
step is also checked in the backing file directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nbd_helpers import MiB, data_ranges, fill_file, read_at, run, sparse_file

pytestmark = [pytest.mark.interop, pytest.mark.peers("qemu-io")]

SIZE = 8 * MiB
K = 1024


def _qemu_io(uri: str, *commands: str, check: bool = True):  # type: ignore[no-untyped-def]
    cmd = ["qemu-io", "-f", "raw"]
    for command in commands:
        cmd += ["-c", command]
    return run([*cmd, uri], check=check)


def test_pattern_writes_and_reads(nbd_server, tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "disk.img", SIZE)
    uri = nbd_server(path).uri("disk")
    _qemu_io(uri, "write -P 0xab 0 1M", "write -P 0xcd 1M 64k", "write -P 0x77 4097 1000",
             "aio_write -P 0x31 3M 128k", "aio_write -P 0x32 5M 128k", "aio_flush")
    _qemu_io(uri, "read -P 0xab 0 4096", "read -P 0x77 4097 1000", "read -P 0xab 5097 1043479",
             "read -P 0xcd 1M 64k", "read -P 0x31 3M 128k", "read -P 0x32 5M 128k",
             "read -P 0 1088k 1M")
    assert read_at(path, 4096, 1) == b"\xab" and read_at(path, 4097, 1000) == b"\x77" * 1000
    assert read_at(path, 1 * MiB, 64 * K) == b"\xcd" * (64 * K)
    assert read_at(path, 5 * MiB, 128 * K) == b"\x32" * (128 * K)


def test_wrong_pattern_is_detected(nbd_server, tmp_path: Path) -> None:
    """The negative control: qemu-io must notice a read that disagrees."""
    uri = nbd_server(fill_file(tmp_path / "disk.img", SIZE, 0x42)).uri("disk")
    _qemu_io(uri, "read -P 0x42 0 8M")
    res = _qemu_io(uri, "read -P 0x43 0 4k", check=False)
    assert res.returncode != 0
    assert "Pattern verification failed" in res.stdout + res.stderr


def test_write_zeroes_discard_fua_flush(nbd_server, tmp_path: Path) -> None:
    path = fill_file(tmp_path / "disk.img", SIZE, 0xee)
    uri = nbd_server(path).uri("disk")
    _qemu_io(uri, "write -z 512k 64k", "write -z -u 1M 1M", "discard 2M 1M",
             "write -f -P 0x11 4M 64k", "write -P 0x12 4160k 64k", "flush")
    _qemu_io(uri, "read -P 0xee 0 512k", "read -P 0 512k 64k", "read -P 0xee 576k 448k",
             "read -P 0 1M 2M", "read -P 0x11 4M 64k", "read -P 0x12 4160k 64k",
             "read -P 0xee 4224k 3968k")
    assert read_at(path, 512 * K, 64 * K) == bytes(64 * K)
    assert read_at(path, 1 * MiB, 2 * MiB) == bytes(2 * MiB)
    assert read_at(path, 4 * MiB, 64 * K) == b"\x11" * (64 * K)
    assert read_at(path, 4160 * K, 64 * K) == b"\x12" * (64 * K)
    holes = [(o, n) for o, n in data_ranges(path) if o < 3 * MiB and o + n > 2 * MiB]
    assert holes == [], "discard of an aligned range should punch a hole in the raw file"


def test_read_only_export(nbd_server, tmp_path: Path) -> None:
    """qemu sees the read-only flag: a read-write open is refused, -r reads work."""
    path = fill_file(tmp_path / "disk.img", SIZE, 0x42)
    uri = nbd_server(path, read_only=True).uri("disk")
    run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 0x42 0 8M", uri])
    res = _qemu_io(uri, "write -P 0x01 0 4k", check=False)
    assert res.returncode != 0
    assert "Permission denied" in res.stderr
    assert read_at(path, 0, 4096) == b"\x42" * 4096
