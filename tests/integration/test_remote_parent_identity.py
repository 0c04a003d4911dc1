"""Registered chains over a remote iSCSI LUN when another LUN now answers at its URL
(the target was replaced: same host, port, IQN and LUN number, another disk with another
VPD 83h identity).  Children made over the first LUN -- snapshot images, a multiattach
client's differencing image -- must not be read over, or merged into, the second one:
every path refuses with one line and neither LUN file changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from remote_parent_support import (
    DAEMON_CONFIG,
    MiB,
    Target,
    nbd_from,
    one_line_error,
    probe_uuid,
    random_file,
    sha,
    wait_no_sessions,
)
from test_cli_registry_support import cli, cli_json
from test_daemon_iscsi_support import Daemon

from blockyard.media.remote_chain import open_path

nbd = pytest.importorskip("nbd")
SIZE = 4 * MiB
CONFIG = DAEMON_CONFIG


def _two_luns(tmp_path: Path) -> tuple[Path, bytes, Path, bytes]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    lun_a, lun_b = tmp_path / "a" / "lun.img", tmp_path / "b" / "lun.img"
    return lun_a, random_file(lun_a, SIZE), lun_b, random_file(lun_b, SIZE)


def _replace(target: Target, lun_b: Path, registered: str) -> Target:
    """Stop ``target``; serve ``lun_b`` at the same URL (a LUN with another identity)."""
    target.stop()
    other = Target.start(lun_b, target.port)
    assert other.url == target.url and probe_uuid(other.url) != registered
    return other


async def test_snapshot_images_are_not_merged_into_another_lun(tmp_path: Path) -> None:
    lun_a, data_a, lun_b, data_b = _two_luns(tmp_path)
    state, out = tmp_path / "state", tmp_path / "out.raw"
    target = Target.start(lun_a)
    try:
        uid = cli_json(state, "medium", "add", target.url)["uuid"]
        s1 = cli_json(state, "snapshot", "take", uid, "--name", "s1")
        current = s1["current"]
        layer = await open_path(current)  # the current state, written over LUN A
        try:
            await layer.pwrite(0, b"x" * MiB)
            await layer.flush()
        finally:
            await layer.close()
        target = _replace(target, lun_b, uid)
        before = sha(Path(current))
        # the registered LUN is checked before any chain is built over it
        why = (target.url, "not the one registered", f"the registry has {uid}")
        one_line_error(cli(state, "medium", "clone", current, str(out), "--format", "raw",
                           check=None), *why)
        assert not out.exists()
        one_line_error(cli(state, "snapshot", "delete", uid, "s1", check=None), *why)
        assert [s["name"] for s in cli_json(state, "snapshot", "list", uid)["snapshots"]] \
            == ["s1"]
        d = Daemon.start(tmp_path, CONFIG)  # the same state: attaching opens the chain
        try:
            r = cli(state, "attach", "net", "--port", "0", "--medium", current, check=None)
            one_line_error(r, *why)
            assert cli_json(state, "medium", "info", current)["attachments"] == []
        finally:
            assert d.stop() == 0
        target.stop()  # no LUN at all: the same refusals, for another reason
        r = cli(state, "snapshot", "delete", uid, "s1", check=None)
        one_line_error(r, target.url, "cannot connect")
        assert len(cli_json(state, "snapshot", "list", uid)["snapshots"]) == 1
        assert sha(Path(current)) == before
    finally:
        target.stop()
    assert lun_a.read_bytes() == data_a and lun_b.read_bytes() == data_b


def test_a_registered_lun_replaced_at_its_url_is_not_served(tmp_path: Path) -> None:
    lun_a, data_a, lun_b, data_b = _two_luns(tmp_path)
    target = Target.start(lun_a)
    d = Daemon.start(tmp_path, CONFIG)
    try:
        m = cli_json(d.state, "medium", "add", target.url, "--type", "multiattach")
        cli(d.state, "attach", "net", "--port", "0", "--medium", m["uuid"], "--name", "lun")
        h = nbd_from(d.nbd_port, "127.0.0.1", "lun")
        h.pwrite(b"a" * 4096, 0)
        h.flush()
        h.shutdown()
        wait_no_sessions(d.state, "lun")
        cli(d.state, "detach", "net", "--port", "0")
        target = _replace(target, lun_b, m["uuid"])
        (diff,) = (d.state / "diffs").iterdir()
        before = sha(diff)
        r = cli(d.state, "attach", "net", "--port", "0", "--medium", m["uuid"], "--name",
                "lun", check=None)  # the registered LUN itself is checked, not only its diffs
        one_line_error(r, target.url, "not the one registered", m["uuid"])
        assert cli_json(d.state, "medium", "info", m["uuid"])["attachments"] == []
        assert sha(diff) == before
        target.stop()
        target = Target.start(lun_a, target.port)  # LUN A is back at its URL
        cli(d.state, "attach", "net", "--port", "0", "--medium", m["uuid"], "--name", "lun")
        again = nbd_from(d.nbd_port, "127.0.0.1", "lun")  # its own image, kept
        assert again.pread(4096, 0) == b"a" * 4096
        assert again.pread(SIZE - 4096, 4096) == data_a[4096:]
        again.shutdown()
        wait_no_sessions(d.state, "lun")
        cli(d.state, "detach", "net", "--port", "0")
    finally:
        try:
            assert d.stop() == 0
        finally:
            target.stop()
    assert lun_a.read_bytes() == data_a and lun_b.read_bytes() == data_b
