"""The command line for chains and snapshots: ``medium create --parent``, quick-mode
serving of a child with its whole chain, ``snapshot take|list|restore|delete`` without a
server, and the one-line errors (exit status, what to do) for bad input."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_cli_registry_support import cli, cli_json

from blockyard.block.formats import open_image

nbd = pytest.importorskip("nbd")
MiB = 1 << 20


def blockyard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockyard", *args], capture_output=True,
                          text=True, timeout=20)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_create_children_and_serve_the_chain_in_quick_mode(
        tmp_path: Path, blockyard_proc: Any) -> None:
    base, child, grand = tmp_path / "base.vmdk", tmp_path / "child.vmdk", tmp_path / "g.vdi"
    assert blockyard("medium", "create", str(base), "--size", "8M", "-f", "vmdk").returncode == 0
    img = open_image(base)
    await img.pwrite(0, b"base" * (MiB // 4))
    await img.close()
    r = blockyard("medium", "create", str(child), "--parent", str(base))
    assert r.returncode == 0 and "vmdk differencing image" in r.stdout
    r = blockyard("medium", "create", str(grand), "--parent", str(child), "--format", "vdi")
    assert r.returncode == 0, r.stderr
    before = _sha(base), _sha(child)
    server = blockyard_proc(grand)
    h = nbd.NBD()
    h.connect_uri(f"nbd://{server.host}:{server.port}/g")
    assert h.get_size() == 8 * MiB and h.pread(8, 0) == b"basebase"
    h.pwrite(b"top!" * 256, 1000)
    assert h.pread(2048, 0) == b"base" * 250 + b"top!" * 256 + b"base" * 6
    h.shutdown()
    server.terminate()
    assert (_sha(base), _sha(child)) == before  # parents are never written


def test_broken_chains_are_one_line_errors(tmp_path: Path) -> None:
    base, child = tmp_path / "base.vhd", tmp_path / "child.vhd"
    blockyard("medium", "create", str(base), "--size", "4M", "-f", "vhd")
    blockyard("medium", "create", str(child), "--parent", str(base))
    r = blockyard("medium", "create", str(child), "--parent", str(base))
    assert r.returncode == 4 and "already exists" in r.stderr
    r = blockyard("medium", "create", str(tmp_path / "x.vmdk"), "--parent", str(base),
                  "-f", "vmdk")
    assert r.returncode == 4 and "make the child a VDI (--format vdi)" in r.stderr
    (tmp_path / "far" / "away").mkdir(parents=True)
    base.rename(tmp_path / "far" / "away" / "base.vhd")  # beyond the locators and the scan
    before = _sha(child)
    r = blockyard("serve", str(child), "--nbd", "127.0.0.1:0")
    assert r.returncode == 4 and r.stderr.count("\n") == 1, r.stderr
    assert "missing or was moved" in r.stderr and "put it back" in r.stderr
    assert _sha(child) == before


def test_snapshot_commands_without_a_server(tmp_path: Path) -> None:
    state, disk = tmp_path / "state", tmp_path / "disk.vdi"
    cli(state, "medium", "add", "--create", "4M", "--format", "vdi", str(disk))
    taken = cli_json(state, "snapshot", "take", "disk.vdi", "--name", "clean")
    assert taken["frozen"] == str(disk) and Path(taken["current"]).exists()
    cli(state, "snapshot", "take", "disk.vdi")
    listing = cli_json(state, "snapshot", "list", "disk.vdi")
    assert [s["name"] for s in listing["snapshots"]] == ["clean", "Snapshot 2"]
    text = cli(state, "snapshot", "list", "disk.vdi").stdout
    assert "  clean" in text and "    Snapshot 2" in text and "current state:" in text
    r = cli_json(state, "snapshot", "restore", "disk.vdi", "clean")
    assert not Path(listing["current_state"]["location"]).exists() and r["name"] == "clean"
    r = cli(state, "snapshot", "restore", "disk.vdi", "nope", check=3)
    assert "no snapshot 'nope'" in r.stderr and "snapshot list" in r.stderr
    r = cli(state, "snapshot", "delete", "disk.vdi", "clean", check=6)
    assert "branches" in r.stderr
    cli(state, "snapshot", "delete", "disk.vdi", "Snapshot 2")
    cli(state, "snapshot", "delete", "disk.vdi", "clean")
    assert cli_json(state, "snapshot", "list", "disk.vdi")["snapshots"] == []
    cli(state, "medium", "add", "--create", "1M", "--type", "writethrough",
        str(tmp_path / "wt.img"))
    r = cli(state, "snapshot", "take", "wt.img", check=6)
    assert "left out of snapshots" in r.stderr and r.stderr.count("\n") == 1
    r = cli(state, "medium", "clone", "disk.vdi", str(tmp_path / "wt.img"), check=4)
    assert "already exists" in r.stderr
