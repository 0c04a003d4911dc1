"""The controller's host-cache policy in the daemon: raw media on a controller with
``host_cache = false`` bypass the page cache (O_DIRECT + our write cache), the
others do not; the iSCSI caching mode page reports the write cache (WCE=1).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_daemon_iscsi_support import Daemon, remote

from blockyard.cli.client import open_backend

CONFIG = """\
[nbd]
listen = ["127.0.0.1:0"]

[iscsi]
listen = ["127.0.0.1:0"]

[[controller]]
name = "direct"
type = "sata"
host_cache = false

[[controller]]
name = "cached"
type = "sata"

[[attachment]]
controller = "direct"
port = 0
medium = "direct.img"
name = "direct"
create_size = "4M"
format = "raw"

[[attachment]]
controller = "cached"
port = 0
medium = "cached.img"
name = "cached"
create_size = "4M"
format = "raw"
"""
MODE_SENSE6_CACHING = bytes([0x1A, 0x08, 0x08, 0x00, 0xFF, 0x00])  # DBD, page 08h


@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Daemon.start(tmp_path, CONFIG)
    yield d
    assert d.stop() == 0


async def _wce(url: str) -> bool:
    async with remote(url) as lun:
        cmd = await lun.path.execute(0, MODE_SENSE6_CACHING, read_len=255)
        data = bytes(cmd.data)
        page = data[4 + data[3]:]
        assert cmd.status == 0 and page[0] & 0x3F == 0x08
        return bool(page[2] & 0x04)


async def test_host_cache_follows_the_controller(daemon: Daemon) -> None:
    stacks = {e["name"]: e["stack"] for e in open_backend(daemon.state).call("live.exports")}
    assert "raw-direct:" in stacks["direct"]
    assert "raw-direct:" not in stacks["cached"] and "raw:" in stacks["cached"]
    assert await _wce(daemon.lun_url("direct", 0))
    assert await _wce(daemon.lun_url("cached", 0))
    data = os.urandom(64 << 10)
    async with remote(daemon.lun_url("direct", 0)) as lun:
        await lun.pwrite(4096, data)
        await lun.flush()  # our write cache goes to the file on SYNCHRONIZE CACHE
    with open(daemon.state / "direct.img", "rb") as f:
        assert os.pread(f.fileno(), len(data), 4096) == data
