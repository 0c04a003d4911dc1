"""`blockyard medium clone iscsi://... local.vdi`: a remote LUN copied to a local
image of another format, registered, byte for byte equal (qemu-img compare)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


def _target(disk: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "blockyard", "serve", str(disk),
                             "--iscsi", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = re.search(r"serving (iscsi://\S+)", proc.stdout.readline())
        if m:
            return proc, m.group(1)
    proc.kill()
    raise AssertionError("the iSCSI target did not start")


def test_clone_a_remote_lun_to_a_local_vdi(tmp_path: Path, require_tool) -> None:  # type: ignore[no-untyped-def]
    qemu_img = require_tool("qemu-img")
    disk = tmp_path / "lun.img"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
        f.seek(3 << 20)
        f.write(os.urandom(1 << 20))
    proc, url = _target(disk)
    try:
        env = {**os.environ, "BLOCKYARD_STATE_DIR": str(tmp_path / "state")}
        out = subprocess.run([sys.executable, "-m", "blockyard", "medium", "clone", url,
                              str(tmp_path / "copy.vdi"), "--format", "vdi"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    cmp = subprocess.run([qemu_img, "compare", "-f", "raw", "-F", "vdi", str(disk),
                          str(tmp_path / "copy.vdi")], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    listing = subprocess.run([sys.executable, "-m", "blockyard", "medium", "list", "--json"],
                             env=env, capture_output=True, text=True, timeout=30)
    assert "copy.vdi" in listing.stdout  # the copy is registered
