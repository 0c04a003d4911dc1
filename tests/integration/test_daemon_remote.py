"""Remote media in the registry: ``blockyard medium add iscsi://...`` against a
quick-mode target (``blockyard serve FILE --iscsi``), attached in the daemon and
served over NBD and iSCSI through the integrated initiator, in a bandwidth group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_registry_support import ENV, cli, cli_json, connect
from test_daemon_iscsi_support import Daemon, raw_file, remote

from blockyard.media.inspect import REMOTE_NAMESPACE, stored_url

nbd = pytest.importorskip("nbd")
MiB = 1 << 20

CONFIG = """\
[nbd]
listen = ["127.0.0.1:0"]

[iscsi]
listen = ["127.0.0.1:0"]

[[bandwidth_group]]
name = "wan"
limit = "1G"

[[controller]]
name = "net"
type = "sas"
host_cache = false
"""


@pytest.fixture
def quick_target(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``blockyard serve lun.img --iscsi 127.0.0.1:0``: (its LUN's URL, the file)."""
    disk = raw_file(tmp_path / "lun.img", 8 * MiB)
    proc = subprocess.Popen([sys.executable, "-m", "blockyard", "serve", str(disk), "--iscsi",
                             "127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=ENV)
    assert proc.stdout is not None
    url = ""
    for _ in range(20):
        line = proc.stdout.readline()
        m = re.match(r"serving (iscsi://\S+)", line)
        if m:
            url = m.group(1)
            break
    try:
        assert url, "the quick-mode target did not start"
        yield url, disk
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_stored_urls_lose_their_secrets() -> None:
    url = ("iscsi://alice%s3cr3t@10.0.0.1:3261/iqn.2026-11.org.x:d/2"
           "?target_user=t&target_password=tsecret&header_digest=crc32c")
    assert stored_url(url) == ("iscsi://alice@10.0.0.1:3261/iqn.2026-11.org.x:d/2"
                               "?target_user=t&header_digest=crc32c")
    kept = "iscsi://bob@h/iqn.2026-11.org.x:d/0?secret_file=/etc/b.chap"
    assert stored_url(kept) == kept


async def test_add_attach_and_serve_a_remote_lun(tmp_path: Path,
                                                 quick_target: tuple[str, Path]) -> None:
    url, disk = quick_target
    d = Daemon.start(tmp_path, CONFIG)
    try:
        with_secret = url.replace("iscsi://", "iscsi://alice%s3cr3t-pass@")
        added = cli(d.state, "medium", "add", with_secret)
        assert "warning: the CHAP secret was not stored" in added.stdout
        [row] = cli_json(d.state, "medium", "list")
        assert row["location"] == url.replace("iscsi://", "iscsi://alice@")
        for db in d.state.glob("registry.sqlite*"):  # the database and its WAL
            assert b"s3cr3t" not in db.read_bytes()
        cli(d.state, "medium", "remove", row["uuid"])
        m = cli_json(d.state, "medium", "add", url, "--type", "shareable")
        assert (m["kind"], m["format"], m["location"]) == ("hdd", "iscsi", url)
        assert m["virtual_size"] == 8 * MiB
        assert m["uuid"] == str(uuid.uuid5(REMOTE_NAMESPACE, m["identity"].lower()))
        again = cli(d.state, "medium", "add", url, check=6)  # same LUN, same identity
        assert "already registered" in again.stderr
        cli(d.state, "medium", "modify", m["uuid"], "--bandwidth-group", "wan")
        cli(d.state, "attach", "net", "--port", "4", "--medium", m["uuid"], "--name", "wan")
        exports = open_exports(d)
        assert exports["wan"]["stack"].endswith(f"iscsi:{url}")  # host cache never applies
        h = connect(d.nbd_port, "wan")
        data = os.urandom(192 << 10)
        h.pwrite(data, MiB)
        h.flush()
        h.shutdown()
        with open(disk, "rb") as f:  # through our initiator, into the remote target's file
            assert os.pread(f.fileno(), len(data), MiB) == data
        async with remote(d.lun_url("net", 4)) as lun:  # re-exported over iSCSI too
            assert bytes(await lun.pread(MiB, len(data))) == data
        cli(d.state, "detach", "net", "--port", "4")
        removed = cli(d.state, "medium", "remove", m["uuid"], "--delete", check=2)
        assert "no file to delete" in removed.stderr
    finally:
        assert d.stop() == 0


def open_exports(d: Daemon) -> dict[str, dict[str, str]]:
    from blockyard.cli.client import open_backend

    return {e["name"]: e for e in open_backend(d.state).call("live.exports")}
