"""The registry daemon as an iSCSI target: controllers are targets, attachments LUNs.

One medium served over NBD (libnbd) and iSCSI (our initiator; libiscsi's
iscsi-ls, iscsi-inq, iscsi-perf) at once is one open stack: writes through
either protocol are read back through the other.  Attach and detach change
the LUNs of the running target; INQUIRY identity follows the medium's UUID
across restarts; a normal medium's one-client rule spans both protocols.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from test_cli_registry_support import cli, cli_json, connect
from test_daemon_iscsi_support import PREFIX, Daemon, iscsi_tool, luns_listed, raw_file, remote

from blockyard.errors import BlockError
from blockyard.transport.iscsi_initiator import probe

nbd = pytest.importorskip("nbd")
MiB = 1 << 20

CONFIG = """\
[nbd]
listen = ["127.0.0.1:0"]

[iscsi]
listen = ["127.0.0.1:0"]

[[controller]]
name = "sata0"
type = "sata"

[[attachment]]
controller = "sata0"
port = 0
medium = "shared.img"
name = "shared"
create_size = "8M"
format = "raw"
write_mode = "shareable"

[[attachment]]
controller = "sata0"
port = 1
medium = "solo.img"
name = "solo"
create_size = "4M"
format = "raw"
"""


@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    d = Daemon.start(tmp_path, CONFIG)
    yield d
    assert d.stop() == 0


async def test_one_medium_over_nbd_and_iscsi_at_once(daemon: Daemon) -> None:
    h = connect(daemon.nbd_port, "shared")
    try:
        via_nbd = os.urandom(256 << 10)
        h.pwrite(via_nbd, MiB)
        async with remote(daemon.lun_url("sata0", 0)) as lun:
            assert lun.size == 8 * MiB
            assert bytes(await lun.pread(MiB, len(via_nbd))) == via_nbd
            via_iscsi = os.urandom(128 << 10)
            await lun.pwrite(3 * MiB, via_iscsi)
            await lun.flush()
            assert bytes(h.pread(len(via_iscsi), 3 * MiB)) == via_iscsi
            assert {s["protocol"] for s in _sessions(daemon)} == {"nbd", "iscsi"}
            assert "blockyard_sessions 2" in _backend(daemon).call("live.metrics")
        h.flush()
    finally:
        h.shutdown()
    with open(daemon.state / "shared.img", "rb") as f:
        assert os.pread(f.fileno(), len(via_iscsi), 3 * MiB) == via_iscsi
        assert os.pread(f.fileno(), len(via_nbd), MiB) == via_nbd


def _backend(daemon: Daemon) -> Any:
    from blockyard.cli.client import open_backend

    return open_backend(daemon.state)


def _sessions(daemon: Daemon) -> list[dict[str, object]]:
    return _backend(daemon).call("live.sessions")  # type: ignore[no-any-return]


def test_libiscsi_tools_see_the_target(daemon: Daemon) -> None:
    portal = f"127.0.0.1:{daemon.iscsi_port}"
    assert luns_listed(portal) == {PREFIX + "sata0": [0, 1]}
    perf = iscsi_tool("iscsi-perf", "-t", "1", daemon.lun_url("sata0", 0))
    assert perf.returncode == 0, perf.stderr
    assert "finished" in perf.stdout


async def _identity(url: str) -> tuple[str, str, str, str]:
    """(serial from iscsi-inq, VPD 83h designator, vendor, product from our initiator)."""
    std = iscsi_tool("iscsi-inq", url).stdout
    assert "Peripheral Device Type:DIRECT_ACCESS" in std
    serial = iscsi_tool("iscsi-inq", "-e", "1", "-c", "128", url).stdout
    m = re.search(r"Unit Serial Number:\[(\w+)\]", serial)
    assert m, serial
    facts = await probe(url)
    return m.group(1), facts["identity"], facts["vendor"], facts["product"]


async def test_inquiry_identity_follows_the_medium_uuid(tmp_path: Path) -> None:
    d = Daemon.start(tmp_path, CONFIG)
    try:
        uuid = next(m["uuid"] for m in cli_json(d.state, "medium", "list")
                    if m["location"].endswith("shared.img"))
        first = await _identity(d.lun_url("sata0", 0))
        assert first[0] == uuid.replace("-", "")
        assert first[1].startswith("naa.") and first[2:] == ("BLOCKYRD", "VIRTUAL DISK")
    finally:
        assert d.stop() == 0
    d = Daemon.start(tmp_path, CONFIG)  # another run, another port: the same identity
    try:
        assert await _identity(d.lun_url("sata0", 0)) == first
        assert (await _identity(d.lun_url("sata0", 1)))[:2] != first[:2]
    finally:
        assert d.stop() == 0


async def test_attach_and_detach_change_the_running_targets(daemon: Daemon,
                                                            tmp_path: Path) -> None:
    portal = f"127.0.0.1:{daemon.iscsi_port}"
    extra = raw_file(tmp_path / "extra.img", 2 * MiB)
    with open(extra, "r+b") as f:
        f.write(b"extra!" * 100)
    cli(daemon.state, "medium", "add", str(extra), "--type", "shareable")
    cli(daemon.state, "attach", "sata0", "--port", "7", "--medium", str(extra))
    cli(daemon.state, "controller", "add", "scsi1", "--type", "scsi")
    cli(daemon.state, "attach", "scsi1", "--port", "2", "--medium", str(extra))
    assert luns_listed(portal) == {PREFIX + "sata0": [0, 1, 7], PREFIX + "scsi1": [2]}
    async with remote(daemon.lun_url("sata0", 7)) as lun:
        assert bytes(await lun.pread(0, 600)) == b"extra!" * 100
    cli(daemon.state, "detach", "scsi1", "--port", "2")
    cli(daemon.state, "detach", "sata0", "--port", "7")
    assert luns_listed(portal) == {PREFIX + "sata0": [0, 1], PREFIX + "scsi1": []}


async def test_a_normal_medium_has_one_client_across_protocols(daemon: Daemon) -> None:
    url = daemon.lun_url("sata0", 1)  # solo.img, write mode normal
    h = connect(daemon.nbd_port, "solo")
    try:
        h.pwrite(b"nbd holds it" * 10, 0)
        with pytest.raises(BlockError, match="DATA PROTECT"):  # no I/O, from login on
            async with remote(url):
                pass
    finally:
        h.shutdown()
    async with remote(url) as lun:  # the NBD client left: the initiator may have it
        assert bytes(await lun.pread(0, 120)) == b"nbd holds it" * 10
        refused = nbd.NBD()
        with pytest.raises(nbd.Error):
            refused.connect_uri(f"nbd://127.0.0.1:{daemon.nbd_port}/solo")
    h = connect(daemon.nbd_port, "solo")  # the initiator logged out: released
    h.shutdown()


async def test_an_immutable_medium_gives_each_initiator_its_own_image(daemon: Daemon,
                                                                      tmp_path: Path) -> None:
    base = raw_file(tmp_path / "golden.img", 2 * MiB)
    base.write_bytes(b"golden" * 1000 + bytes(2 * MiB - 6000))
    cli(daemon.state, "medium", "add", str(base), "--type", "immutable")
    cli(daemon.state, "attach", "sata0", "--port", "9", "--medium", str(base))
    url = daemon.lun_url("sata0", 9)
    async with remote(url, initiator_name="iqn.2026-11.org.example:one") as one, \
            remote(url, initiator_name="iqn.2026-11.org.example:two") as two:
        await one.pwrite(0, b"mine" * 1024)
        assert bytes(await one.pread(0, 8)) == b"minemine"
        assert bytes(await two.pread(0, 12)) == b"goldengolden"  # its own view of the base
    assert base.read_bytes()[:12] == b"goldengolden"  # the base is never written
    diffs = sorted(p.name for p in (daemon.state / "diffs").iterdir())
    assert len(diffs) == 2 and all(d.startswith("golden.img-") for d in diffs)
    assert diffs[0].endswith("org.example_one.vdi") and diffs[1].endswith("example_two.vdi")
