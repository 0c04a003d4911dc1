"""Quick mode re-exports a remote iSCSI LUN over NBD: NBD client -> our
initiator -> our iSCSI target -> a file; the bytes land in the file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbd = pytest.importorskip("nbd")


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "blockyard", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen += line
        if line.startswith("serving "):
            return proc, seen
    proc.kill()
    raise AssertionError(f"server did not start: {seen}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_nbd_over_a_remote_lun_writes_through(tmp_path: Path) -> None:
    disk = tmp_path / "lun.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    target, out = _start(str(disk), "--iscsi", "127.0.0.1:0", "--nbd", "127.0.0.1:0")
    try:
        url = re.search(r"(iscsi://\S+)", out).group(1)  # type: ignore[union-attr]
        gateway, gout = _start(url, "--nbd", "127.0.0.1:0")
        try:
            port = int(re.search(r"listening on 127.0.0.1:(\d+)", gout).group(1))  # type: ignore[union-attr]
            h = nbd.NBD()
            h.set_export_name("lun")  # the IQN's last component
            h.connect_tcp("127.0.0.1", str(port))
            assert h.get_size() == 8 << 20
            data = os.urandom(128 << 10)
            h.pwrite(data, 1 << 20)
            h.flush()
            assert h.pread(len(data), 1 << 20) == data
            h.shutdown()
        finally:
            _stop(gateway)
    finally:
        _stop(target)
    with open(disk, "rb") as f:
        f.seek(1 << 20)
        assert f.read(len(data)) == data
