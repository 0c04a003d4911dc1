"""Registered chains over a remote iSCSI LUN, served by the registry daemon: immutable and
multiattach LUNs give each NBD client its own differencing VDI under STATE/diffs (two
clients, 127.0.0.1 and 127.0.0.2), and a local VDI child of a registered LUN is
registered under it, served with the LUN logged in below, cloned flat, and (multiattach)
gives each client its own image over that chain.  The LUN is our own quick-mode target
in a subprocess; its backing file is never written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from remote_parent_support import (
    DAEMON_CONFIG,
    MiB,
    Target,
    image_check,
    nbd_from,
    patched,
    random_file,
    run,
    sha,
    wait_no_sessions,
)
from test_cli_registry_support import cli, cli_json
from test_daemon_iscsi_support import Daemon

nbd = pytest.importorskip("nbd")
SIZE = 8 * MiB
CONFIG = DAEMON_CONFIG
A = {MiB - 700: b"A" * 3000, 5 * MiB + 1: b"a" * 70000}  # each crosses a 1 MiB block
B = {MiB - 100: b"B" * 5000, 6 * MiB - 9: b"b" * 4096}   # overlaps A's first write


def _session(d: Daemon, source: str, reads: dict[int, bytes], writes: dict[int, bytes]) -> Any:
    """Connect from ``source``, check ``reads`` (offset: bytes), then make ``writes``."""
    h = nbd_from(d.nbd_port, source, "lun")
    assert h.get_size() == SIZE
    for off, want in reads.items():
        assert h.pread(len(want), off) == want, (source, off)
    for off, chunk in writes.items():
        h.pwrite(chunk, off)
    return h


def _leave(d: Daemon, *handles: Any) -> None:
    for h in handles:
        h.flush()
        h.shutdown()
    wait_no_sessions(d.state, "lun")


def _lun_reads(data: bytes, *spans: dict[int, bytes]) -> dict[int, bytes]:
    """What the LUN itself holds where ``spans`` were written."""
    return {off: data[off:off + len(c)] for span in spans for off, c in span.items()}


@pytest.mark.parametrize("mode", ["immutable", "multiattach"])
def test_client_diffs_over_a_registered_lun(tmp_path: Path, mode: str) -> None:
    lun = tmp_path / "lun.img"
    data = random_file(lun, SIZE)
    before = sha(lun)
    target = Target.start(lun)
    d = Daemon.start(tmp_path, CONFIG)
    try:
        m = cli_json(d.state, "medium", "add", target.url)
        cli(d.state, "medium", "modify", m["uuid"], "--type", mode)
        assert cli_json(d.state, "medium", "info", m["uuid"])["write_mode"] == mode
        cli(d.state, "attach", "net", "--port", "0", "--medium", m["uuid"], "--name", "lun")
        a = _session(d, "127.0.0.1", {0: data[:SIZE // 2]}, A)
        b = _session(d, "127.0.0.2", {}, B)
        seen_a, seen_b = patched(data, A), patched(data, B)
        assert a.pread(SIZE, 0) == seen_a  # each client reads its own writes only
        assert b.pread(SIZE, 0) == seen_b
        _leave(d, a, b)
        assert sha(lun) == before  # the LUN is the clients' read-only base
        diffs = sorted((d.state / "diffs").iterdir())
        assert [p.name.split("--")[1] for p in diffs] == ["127.0.0.1.vdi", "127.0.0.2.vdi"]
        for p in diffs:  # each names the LUN as its parent, by its identity UUID and URL
            r = run("medium", "info", str(p), "--json")
            assert r.returncode == 0, r.stderr
            assert f'"parent_uuid": "{m["uuid"]}"' in r.stdout and target.url in r.stdout
            image_check(p)
        if mode == "immutable":  # reset when the next session starts
            a = _session(d, "127.0.0.1", _lun_reads(data, A), {})
            b = _session(d, "127.0.0.2", _lun_reads(data, B), {})
        else:  # multiattach: each client's image is kept across sessions
            a = _session(d, "127.0.0.1", {0: seen_a}, {})
            b = _session(d, "127.0.0.2", {0: seen_b}, {})
        _leave(d, a, b)
        cli(d.state, "detach", "net", "--port", "0")
    finally:
        try:
            assert d.stop() == 0
        finally:
            target.stop()
    assert sha(lun) == before
    assert " ERROR " not in d.log() and "Traceback" not in d.log(), d.log()


def test_a_registered_child_of_a_registered_lun(tmp_path: Path) -> None:
    lun, child = tmp_path / "lun.img", tmp_path / "child.vdi"
    live_copy, copy = tmp_path / "live.raw", tmp_path / "copy.raw"
    data = random_file(lun, SIZE)
    before = sha(lun)
    target = Target.start(lun)
    d = Daemon.start(tmp_path, CONFIG)
    try:
        r = run("medium", "create", str(child), "--parent", target.url)
        assert r.returncode == 0, r.stderr
        r = cli(d.state, "medium", "add", str(child), check=4)  # the LUN is not known yet
        assert "is not registered; add the parent first" in r.stderr
        m = cli_json(d.state, "medium", "add", target.url)
        c = cli_json(d.state, "medium", "add", str(child))  # its link UUID finds the LUN
        assert (c["format"], c["parent_uuid"]) == ("vdi", m["uuid"])
        info = cli(d.state, "medium", "info", "child.vdi").stdout
        assert f"Parent:          {m['uuid']} ({target.url})" in info
        assert str(child) in cli(d.state, "medium", "info", m["uuid"]).stdout  # its child
        tree = cli(d.state, "medium", "list", "--tree").stdout.splitlines()
        [lun_row] = [i for i, line in enumerate(tree) if line.endswith(f"  {target.url}")]
        assert tree[lun_row + 1].startswith(c["uuid"])
        assert tree[lun_row + 1].endswith(f"    {child}")  # indented under the LUN
        r = cli(d.state, "medium", "remove", m["uuid"], check=6)  # it is a parent now
        assert r.stderr.count("\n") == 1

        cli(d.state, "attach", "net", "--port", "1", "--medium", "child.vdi", "--name", "lun")
        writes = {2 * MiB - 333: os.urandom(MiB), 7 * MiB + 5: os.urandom(9000)}
        h = _session(d, "127.0.0.1", {0: data}, writes)
        expected = patched(data, writes)
        h.flush()
        assert h.pread(SIZE, 0) == expected
        r = cli(d.state, "medium", "clone", "child.vdi", str(live_copy), "--format", "raw")
        assert live_copy.read_bytes() == expected  # cloned while served: the live chain
        _leave(d, h)
        cli(d.state, "detach", "net", "--port", "1")
        assert sha(lun) == before  # the writes landed in child.vdi only
        r = run("medium", "info", str(child), "--json")
        assert '"blocks_allocated": 3' in r.stdout, r.stdout  # blocks 1, 2 and 7
        image_check(child)
        cli(d.state, "medium", "clone", "child.vdi", str(copy), "--format", "raw")
        assert copy.read_bytes() == expected  # flattened through the registered LUN
        # multiattach on the child: each client's image over the chain's borrowed LUN
        child_sha = sha(child)
        cli(d.state, "medium", "modify", "child.vdi", "--type", "multiattach")
        cli(d.state, "attach", "net", "--port", "1", "--medium", "child.vdi", "--name", "lun")
        a = _session(d, "127.0.0.1", {0: expected}, A)
        b = _session(d, "127.0.0.2", {0: expected}, B)
        assert a.pread(SIZE, 0) == patched(expected, A)
        assert b.pread(SIZE, 0) == patched(expected, B)
        _leave(d, a, b)
        cli(d.state, "detach", "net", "--port", "1")
        assert sha(child) == child_sha and sha(lun) == before
        assert len(list((d.state / "diffs").iterdir())) == 2
    finally:
        try:
            assert d.stop() == 0
        finally:
            target.stop()
    assert sha(lun) == before
    assert " ERROR " not in d.log() and "Traceback" not in d.log(), d.log()
