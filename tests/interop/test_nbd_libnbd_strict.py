"""Out-of-spec requests through libnbd with strict mode off: the server must refuse
each one with the right errno and keep the connection usable."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from nbd_helpers import MiB, fill_file, read_at, write_at

pytestmark = pytest.mark.interop

SIZE = 40 * MiB
MAX_BLOCK = 32 * MiB
HEAD = b"known head bytes"


@pytest.fixture
def export_path(tmp_path: Path) -> Path:
    path = fill_file(tmp_path / "disk.img", SIZE, 0x5c)
    write_at(path, 0, HEAD)
    return path


def _loose(nbd, uri: str):  # type: ignore[no-untyped-def]
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h


def _errno_of(nbd, call) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(nbd.Error) as info:
        call()
    return info.value.errnum  # type: ignore[no-any-return]


def _still_usable(h) -> None:  # type: ignore[no-untyped-def]
    assert h.pread(len(HEAD), 0) == HEAD
    assert h.aio_is_ready()


def test_read_past_the_end_is_einval(nbd, nbd_server, export_path: Path) -> None:
    h = _loose(nbd, nbd_server(export_path).uri("disk"))
    assert _errno_of(nbd, lambda: h.pread(4096, SIZE - 2048)) == errno.EINVAL
    assert _errno_of(nbd, lambda: h.pread(512, SIZE + MiB)) == errno.EINVAL
    assert h.pread(2048, SIZE - 2048) == b"\x5c" * 2048  # the last bytes are fine
    _still_usable(h)


def test_write_past_the_end_is_enospc(nbd, nbd_server, export_path: Path) -> None:
    h = _loose(nbd, nbd_server(export_path).uri("disk"))
    assert _errno_of(nbd, lambda: h.pwrite(b"\x01" * 4096, SIZE - 2048)) == errno.ENOSPC
    assert _errno_of(nbd, lambda: h.zero(4096, SIZE - 2048)) == errno.ENOSPC
    _still_usable(h)
    h.shutdown()
    assert read_at(export_path, SIZE - 2048, 2048) == b"\x5c" * 2048
    assert os.path.getsize(export_path) == SIZE


def test_writes_to_read_only_export_are_eperm(nbd, nbd_server, export_path: Path) -> None:
    h = _loose(nbd, nbd_server(export_path, read_only=True).uri("disk"))
    assert h.is_read_only()
    assert _errno_of(nbd, lambda: h.pwrite(b"\x01" * 512, 0)) == errno.EPERM
    assert _errno_of(nbd, lambda: h.pwrite(b"\x01" * 512, 0, nbd.CMD_FLAG_FUA)) == errno.EPERM
    # WRITE_ZEROES is not named by the spec's EPERM rule and is not advertised here
    assert _errno_of(nbd, lambda: h.zero(MiB, 0)) in (errno.EPERM, errno.EINVAL)
    _still_usable(h)
    h.shutdown()
    assert read_at(export_path, 0, len(HEAD)) == HEAD


def test_trim_on_read_only_export_is_eperm(nbd, nbd_server, export_path: Path) -> None:
    h = _loose(nbd, nbd_server(export_path, read_only=True).uri("disk"))
    errnum = _errno_of(nbd, lambda: h.trim(MiB, 0))
    _still_usable(h)
    assert errnum == errno.EPERM


def test_trim_past_the_end_is_einval(nbd, nbd_server, export_path: Path) -> None:
    h = _loose(nbd, nbd_server(export_path).uri("disk"))
    errnum = _errno_of(nbd, lambda: h.trim(MiB, SIZE - 4096))
    _still_usable(h)
    assert errnum == errno.EINVAL


@pytest.mark.parametrize("flag", [
    0x20,  # PAYLOAD_LEN: known, but extended headers were not negotiated
    0x40,
    0x100,
    0x8000,
], ids=hex)
def test_unknown_read_flag_is_einval(nbd, nbd_server, export_path: Path, flag: int) -> None:
    h = _loose(nbd, nbd_server(export_path).uri("disk"))
    assert _errno_of(nbd, lambda: h.pread(512, 0, flag)) == errno.EINVAL
    _still_usable(h)


def test_write_with_unknown_flag_is_refused_and_not_applied(nbd, nbd_server,
                                                            export_path: Path) -> None:
    h = _loose(nbd, nbd_server(export_path).uri("disk"))
    errnum = _errno_of(nbd, lambda: h.pwrite(b"\x01" * 4096, MiB, 0x200))
    h.shutdown()
    assert errnum == errno.EINVAL
    assert read_at(export_path, MiB, 4096) == b"\x5c" * 4096


def test_write_zeroes_with_unknown_flag_is_refused_and_not_applied(
        nbd, nbd_server, export_path: Path) -> None:
    h = _loose(nbd, nbd_server(export_path).uri("disk"))
    errnum = _errno_of(nbd, lambda: h.zero(4096, MiB, 0x200))
    h.shutdown()
    assert read_at(export_path, MiB, 4096) == b"\x5c" * 4096
    assert errnum == errno.EINVAL


def test_block_status_with_unknown_flag_is_einval(nbd, nbd_server, export_path: Path) -> None:
    h = _loose(nbd, nbd_server(export_path).uri("disk"))
    assert _errno_of(nbd, lambda: h.block_status(MiB, 0, lambda *a: 0, 0x400)) == errno.EINVAL


def test_zero_length_block_status_is_einval(nbd, nbd_server, export_path: Path) -> None:
    h = _loose(nbd, nbd_server(export_path).uri("disk"))
    assert _errno_of(nbd, lambda: h.block_status(0, 0, lambda *args: 0)) == errno.EINVAL
    _still_usable(h)


def test_oversized_read_and_write_are_einval(nbd, nbd_server, export_path: Path) -> None:
    h = _loose(nbd, nbd_server(export_path).uri("disk"))
    assert h.get_block_size(nbd.SIZE_MAXIMUM) == MAX_BLOCK
    assert _errno_of(nbd, lambda: h.pread(MAX_BLOCK + 4096, 0)) == errno.EINVAL
    _still_usable(h)
    big = b"\x01" * (MAX_BLOCK + 4096)
    assert _errno_of(nbd, lambda: h.pwrite(big, 0)) == errno.EINVAL
    _still_usable(h)  # the payload was skipped, not parsed as requests
    assert h.pread(MAX_BLOCK, 0)[len(HEAD):] == b"\x5c" * (MAX_BLOCK - len(HEAD))
    h.pwrite(b"\x02" * MAX_BLOCK, 4 * MiB)  # exactly the maximum is fine
    h.shutdown()
    assert read_at(export_path, 0, 4 * MiB)[len(HEAD):] == b"\x5c" * (4 * MiB - len(HEAD))
    assert read_at(export_path, 4 * MiB, MAX_BLOCK) == b"\x02" * MAX_BLOCK
