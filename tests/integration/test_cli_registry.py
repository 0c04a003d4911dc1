"""The registry CLI against a real server: every step proven by what an NBD client reads.

Each test starts ``blockyard serve`` (registry mode) on a fresh state directory,
drives it with the real ``blockyard`` command in subprocesses, and reads the
exports with libnbd.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_registry_support import (
    MiB,
    RegistryServer,
    cli,
    cli_json,
    connect,
    export_names,
    read_export,
    write_pattern,
)

pytest.importorskip("nbd")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RegistryServer]:
    srv = RegistryServer.start(tmp_path / "state")
    yield srv
    assert srv.stop() == 0


def _disk(tmp_path: Path, name: str = "disk.img", size: int = 8 * MiB) -> Path:
    path = tmp_path / name
    write_pattern(path, size, {0: b"BOOT" * 128, 5 * MiB: b"data" * 1024})
    return path


def test_default_demo_is_registered_and_served(server: RegistryServer) -> None:
    media = cli_json(server.state, "medium", "list")
    assert [m["name"] for m in media] == ["demo.img"]
    assert media[0]["in_use"] and media[0]["virtual_size"] == 1 << 30
    assert export_names(server.port) == ["demo"]


def test_add_attach_serves_the_file_then_detach_withdraws_it(server: RegistryServer,
                                                              tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    cli(server.state, "medium", "add", str(disk))
    cli(server.state, "controller", "add", "sata0", "--type", "sata")
    out = cli(server.state, "attach", "sata0", "--port", "3", "--medium", "disk.img").stdout
    assert "as export sata0-3" in out
    assert read_export(server.port, "sata0-3", 5 * MiB, 4096) == b"data" * 1024
    cli(server.state, "detach", "sata0", "--port", "3")
    assert "sata0-3" not in export_names(server.port)
    assert cli_json(server.state, "controller", "list")[1]["used"] == 0


def test_clone_to_every_format_serves_the_same_bytes(server: RegistryServer,
                                                     tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    cli(server.state, "medium", "add", str(disk))
    cli(server.state, "controller", "add", "c", "--type", "sas")
    src = cli_json(server.state, "medium", "info", "disk.img")
    for port, fmt in enumerate(["vdi", "vmdk", "vhd", "raw"]):
        copy = tmp_path / f"copy.{fmt}"
        m = cli_json(server.state, "medium", "clone", "disk.img", str(copy), "--format", fmt)
        assert m["uuid"] != src["uuid"] and m["format"] == fmt
        assert m["allocated_size"] < 4 * MiB  # sparse: 8 MiB disk, two small chunks
        cli(server.state, "attach", "c", "--port", str(port), "--medium", str(copy))
        assert read_export(server.port, f"c-{port}", 0, 512) == b"BOOT" * 128
        assert read_export(server.port, f"c-{port}", 5 * MiB, 4096) == b"data" * 1024
        assert read_export(server.port, f"c-{port}", 7 * MiB, 4096) == bytes(4096)


def test_duplicate_uuid_is_refused_and_points_at_clone(server: RegistryServer,
                                                       tmp_path: Path) -> None:
    cli(server.state, "medium", "add", "--create", "4M", "--format", "vdi",
        str(tmp_path / "a.vdi"))
    (tmp_path / "b.vdi").write_bytes((tmp_path / "a.vdi").read_bytes())
    r = cli(server.state, "medium", "add", str(tmp_path / "b.vdi"), check=6)
    assert "already knows" in r.stderr and "clone" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert len(cli_json(server.state, "medium", "list", "hdd")) == 2  # demo + a.vdi only
    cli(server.state, "medium", "clone", str(tmp_path / "b.vdi"), str(tmp_path / "c.vdi"))
    assert len(cli_json(server.state, "medium", "list", "hdd")) == 3


def test_move_updates_location_and_children_follow(server: RegistryServer,
                                                   tmp_path: Path) -> None:
    parent = _disk(tmp_path, "parent.img")
    child = _disk(tmp_path, "child.img", 8 * MiB)
    p = cli_json(server.state, "medium", "add", str(parent))
    cli(server.state, "medium", "add", str(child), "--parent", "parent.img")
    (tmp_path / "elsewhere").mkdir()
    moved = tmp_path / "elsewhere" / "renamed.img"
    m = cli_json(server.state, "medium", "modify", "parent.img", "--move", str(moved))
    assert m["location"] == str(moved) and m["uuid"] == p["uuid"]
    assert moved.exists() and not parent.exists()
    info = cli_json(server.state, "medium", "info", "child.img")
    assert info["parent_uuid"] == p["uuid"] and info["parent_location"] == str(moved)
    tree = cli(server.state, "medium", "list", "--tree").stdout
    assert tree.index("renamed.img") < tree.index("  " + str(child))
    cli(server.state, "controller", "add", "c", "--type", "ide")
    cli(server.state, "attach", "c", "--medium", "renamed.img")
    assert read_export(server.port, "c-0", 0, 512) == b"BOOT" * 128


def test_modify_resize_refused_while_served_then_applied(server: RegistryServer,
                                                         tmp_path: Path) -> None:
    cli(server.state, "medium", "add", str(_disk(tmp_path)), "--description", "first")
    cli(server.state, "controller", "add", "c", "--type", "nvme")
    cli(server.state, "attach", "c", "--port", "0", "--medium", "disk.img")
    r = cli(server.state, "medium", "modify", "disk.img", "--resize", "16M", check=6)
    assert "detach it" in r.stderr
    cli(server.state, "detach", "c", "--port", "0")
    m = cli_json(server.state, "medium", "modify", "disk.img", "--resize", "16M",
                 "--description", "second", "--type", "readonly")
    assert (m["virtual_size"], m["description"], m["write_mode"]) == (16 * MiB, "second",
                                                                       "readonly")
    cli(server.state, "attach", "c", "--port", "0", "--medium", "disk.img")
    h = connect(server.port, "c-0")
    assert h.get_size() == 16 * MiB and h.is_read_only()
    h.shutdown()


def test_remove_refused_while_attached_or_parent_then_deletes(server: RegistryServer,
                                                              tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    cli(server.state, "medium", "add", str(disk))
    cli(server.state, "medium", "add", str(_disk(tmp_path, "kid.img")), "--parent", "disk.img")
    cli(server.state, "controller", "add", "c", "--type", "usb")
    cli(server.state, "attach", "c", "--medium", "disk.img", "--name", "mydisk")
    r = cli(server.state, "medium", "remove", "disk.img", check=6)
    assert "attached at c:0 (export mydisk)" in r.stderr
    cli(server.state, "medium", "release", "disk.img")
    assert "mydisk" not in export_names(server.port)
    r = cli(server.state, "medium", "remove", "disk.img", check=6)
    assert "has children" in r.stderr and "kid.img" in r.stderr
    cli(server.state, "medium", "remove", "kid.img")
    cli(server.state, "medium", "remove", "disk.img", "--delete")
    assert not disk.exists()
    assert cli(server.state, "medium", "info", "disk.img", check=3).stderr.startswith(
        "blockyard: no medium")


def test_detach_waits_for_reads_in_flight_then_ends_the_session(server: RegistryServer,
                                                                tmp_path: Path) -> None:
    cli(server.state, "medium", "add", str(_disk(tmp_path, size=64 * MiB)))
    cli(server.state, "controller", "add", "c", "--type", "scsi")
    cli(server.state, "attach", "c", "--medium", "disk.img")
    h = connect(server.port, "c-0")
    results: list[object] = []

    def reader() -> None:  # keeps requests in flight while the detach runs
        try:
            while True:
                results.append(bytes(h.pread(4 * MiB, 0))[:4])
        except Exception as exc:  # the session ends: libnbd reports it
            results.append(exc)
    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.3)
    out = cli(server.state, "detach", "c", "--port", "0").stdout
    t.join(20)
    assert not t.is_alive()
    assert "1 sessions ended" in out
    reads = [r for r in results if isinstance(r, bytes)]
    assert reads and all(r == b"BOOT" for r in reads)  # every answered read was whole
    assert isinstance(results[-1], Exception)
    media = {m["name"]: m for m in cli_json(server.state, "medium", "list")}
    assert media["disk.img"]["in_use"] is False and media["demo.img"]["in_use"] is True


def test_full_controller_and_taken_port(server: RegistryServer, tmp_path: Path) -> None:
    cli(server.state, "controller", "add", "ide0", "--type", "ide")
    for i in range(5):
        cli(server.state, "medium", "add", "--create", "1M", str(tmp_path / f"d{i}.img"))
    for i in range(4):
        cli(server.state, "attach", "ide0", "--medium", f"d{i}.img")
    r = cli(server.state, "attach", "ide0", "--medium", "d4.img", check=6)
    assert "is full: all 4 ports are used" in r.stderr
    r = cli(server.state, "attach", "ide0", "--port", "2", "--medium", "d4.img", check=6)
    assert "port 2 of controller 'ide0' is taken" in r.stderr
    r = cli(server.state, "attach", "ide0", "--port", "4", "--medium", "d4.img", check=2)
    assert "has ports 0-3" in r.stderr
    assert sorted(export_names(server.port)) == ["demo", "ide0-0", "ide0-1", "ide0-2", "ide0-3"]


def test_vanished_file_shows_inaccessible_and_clear_forgets_dvd_only(
        server: RegistryServer, tmp_path: Path) -> None:
    for name, kind in [("cd.iso", "dvd"), ("fd.img", "floppy"), ("hd.img", "hdd")]:
        write_pattern(tmp_path / name, 1474560, {})
        cli(server.state, "medium", "add", str(tmp_path / name), "--kind", kind)
    for name in ("cd.iso", "fd.img", "hd.img"):
        os.unlink(tmp_path / name)
    media = {m["name"]: m for m in cli_json(server.state, "medium", "list")}
    assert not media["cd.iso"]["accessible"] and "no such file" in media["hd.img"]["last_error"]
    assert "inaccessible" in cli(server.state, "medium", "list").stdout
    out = cli(server.state, "medium", "clear-inaccessible").stdout
    assert "cd.iso" in out and "fd.img" in out and "hd.img" not in out
    assert sorted(m["name"] for m in cli_json(server.state, "medium", "list")) == [
        "demo.img", "hd.img"]


def test_sessions_and_metrics_show_who_reads_what(server: RegistryServer) -> None:
    h = connect(server.port, "demo")
    h.pread(65536, 0)
    import json
    import subprocess
    sock = str(server.state / "control.sock")
    sessions = json.loads(subprocess.run(
        ["curl", "-s", "--unix-socket", sock, "http://x/v1/sessions"],
        capture_output=True, check=True).stdout) if _have_curl() else None
    if sessions is not None:
        assert sessions[0]["export"] == "demo" and sessions[0]["export_bytes"] >= 65536
    from blockyard.cli.client import RemoteBackend
    metrics = RemoteBackend(server.state / "control.sock").call("live.metrics")
    assert 'blockyard_export_bytes_total{export="demo"} 65536' in metrics
    assert 'blockyard_export_sessions{export="demo"} 1' in metrics
    h.shutdown()


def _have_curl() -> bool:
    import shutil
    return shutil.which("curl") is not None
