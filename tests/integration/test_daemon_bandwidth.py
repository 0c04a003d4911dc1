"""Bandwidth groups in the registry daemon, through the real ``blockyard`` command.

With a server running, ``blockyard bandwidth ...`` goes through its control
API: the registry changes and the live group with it.  Groups are declared in
the config (the declared limit wins at start) or added at run time, persist
across restarts, and are refused removal while media use them.  NBD and
iSCSI sessions of a grouped medium are charged to the one group, each under
its own session key.  (How fast the limit holds is measured in
benchmarks/bandwidth_mixed.py, not here.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_cli_registry_support import cli, cli_json, connect
from test_daemon_iscsi_support import Daemon, remote

from blockyard.cli.client import open_backend

nbd = pytest.importorskip("nbd")
MiB = 1 << 20
INITIATOR = "iqn.2026-11.org.example:reader"

CONFIG = """\
[nbd]
listen = ["127.0.0.1:0"]

[iscsi]
listen = ["127.0.0.1:0"]

[[bandwidth_group]]
name = "declared"
limit = "1G"

[[controller]]
name = "c"
type = "sata"

[[attachment]]
controller = "c"
port = 0
medium = "grouped.img"
name = "grouped"
create_size = "4M"
format = "raw"
write_mode = "shareable"
bandwidth_group = "declared"

[[attachment]]
controller = "c"
port = 1
medium = "free.img"
name = "free"
create_size = "4M"
format = "raw"
"""


def groups(state: Path) -> dict[str, dict[str, Any]]:
    """bandwidth.list as the control API (or, with no server, the registry) answers it."""
    listed = {g["name"]: g for g in open_backend(state).call("bandwidth.list")}
    shown = cli_json(state, "bandwidth", "list")  # what the command prints agrees
    assert shown == [{"name": n, "limit": g["limit"], "limit_text": g["limit_text"]}
                     for n, g in sorted(listed.items())]
    return listed


def test_bandwidth_commands_go_through_the_running_server(tmp_path: Path) -> None:
    d = Daemon.start(tmp_path, CONFIG)
    try:
        cli(d.state, "bandwidth", "add", "fast", "--limit", "512M")
        cli(d.state, "bandwidth", "set", "declared", "--limit", "10M")
        live = groups(d.state)
        assert live["declared"]["limit"] == 10 * MiB
        assert live["declared"]["media"] == ["grouped.img"]
        assert "sessions" in live["fast"]  # the server's live group answered
        refused = cli(d.state, "bandwidth", "remove", "declared", check=6)
        assert refused.stderr == ("blockyard: bandwidth group 'declared' is used by: "
                                  "grouped.img\n")
        cli(d.state, "medium", "modify", "grouped.img", "--bandwidth-group", "fast")
        assert groups(d.state)["fast"]["media"] == ["grouped.img"]
        cli(d.state, "bandwidth", "remove", "declared")
        out = cli(d.state, "medium", "modify", "free.img", "--bandwidth-group", "fast", check=6)
        assert "enters or leaves one only when it is next opened" in out.stderr
        cli(d.state, "medium", "modify", "grouped.img", "--bandwidth-group", "none", check=6)
    finally:
        assert d.stop() == 0
    cli(d.state, "bandwidth", "set", "fast", "--limit", "0")  # no server: the registry
    d = Daemon.start(tmp_path, CONFIG)
    try:
        now = groups(d.state)
        assert now["fast"]["limit"] == 0  # kept in the registry
        assert now["declared"]["limit"] == 1 << 30  # declared again, with its limit
        assert now["declared"]["media"] == ["grouped.img"]  # as its attachment says
    finally:
        assert d.stop() == 0


async def test_nbd_and_iscsi_sessions_share_the_group(tmp_path: Path) -> None:
    d = Daemon.start(tmp_path, CONFIG)
    try:
        h = connect(d.nbd_port, "grouped")
        h.pread(MiB, 0)
        async with remote(d.lun_url("c", 0), initiator_name=INITIATOR) as lun:
            await lun.pread(MiB, MiB)
            await lun.pwrite(2 * MiB, b"x" * 65536)
        sessions = groups(d.state)["declared"]["sessions"]
        assert isinstance(sessions, dict)
        nbd_keys = [k for k in sessions if k.startswith("nbd:127.0.0.1:")]
        assert len(nbd_keys) == 1 and sessions[nbd_keys[0]] == MiB
        assert sessions[f"iscsi:{INITIATOR}"] >= MiB + 65536
        h.shutdown()
    finally:
        assert d.stop() == 0
