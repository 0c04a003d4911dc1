"""The registry server's life: restart after a crash, bad starts, one server per state dir."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from test_cli_registry_support import (
    ENV,
    RegistryServer,
    cli,
    cli_json,
    command,
    export_names,
    read_export,
    write_pattern,
)

pytest.importorskip("nbd")
MiB = 1 << 20


def test_sigkill_then_restart_serves_the_same_registry(tmp_path: Path) -> None:
    state = tmp_path / "state"
    srv = RegistryServer.start(state)
    write_pattern(tmp_path / "d.img", 4 * MiB, {MiB: b"kept" * 1024})
    cli(state, "medium", "add", str(tmp_path / "d.img"))
    cli(state, "controller", "add", "s", "--type", "sata")
    cli(state, "attach", "s", "--port", "9", "--medium", "d.img", "--name", "keep")
    srv.kill()  # no cleanup: socket, lock file, WAL stay behind
    assert (state / "control.sock").exists()
    assert not cli(state, "medium", "list", "--json").stderr  # the CLI copes, locally
    srv = RegistryServer.start(state)
    try:
        assert export_names(srv.port) == ["demo", "keep"]
        assert read_export(srv.port, "keep", MiB, 4096) == b"kept" * 1024
        assert len(cli_json(state, "medium", "list")) == 2  # demo not registered twice
    finally:
        assert srv.stop() == 0
    assert not (state / "control.sock").exists()


def test_second_server_on_one_state_dir_is_refused(tmp_path: Path) -> None:
    srv = RegistryServer.start(tmp_path / "state")
    try:
        r = subprocess.run(command("serve", "--state-dir", str(srv.state), "--nbd",
                                   "127.0.0.1:0"), capture_output=True, text=True, env=ENV,
                           timeout=60)
        assert r.returncode == 6
        assert r.stderr.strip() == (f"blockyard: another blockyard server (pid "
                                    f"{srv.proc.pid}) runs with state directory {srv.state}")
    finally:
        assert srv.stop() == 0


def test_config_with_a_typo_stops_the_start_with_file_and_line(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[nbd]\nlisten = ["127.0.0.1:0"]\n\n[[controller]]\nname = "c"\n'
                   'tpye = "sata"\n')
    r = subprocess.run(command("serve", "--config", str(cfg), "--state-dir",
                               str(tmp_path / "s")), capture_output=True, text=True, env=ENV,
                       timeout=60)
    assert r.returncode == 2
    assert r.stderr == (f"blockyard: {cfg}:4: controller[0]: missing required key 'type' "
                        f"(and 1 more; run 'blockyard config check {cfg}')\n")
    checked = subprocess.run(command("config", "check", str(cfg)), capture_output=True,
                             text=True, env=ENV, timeout=60)
    assert checked.returncode == 2
    assert checked.stderr.splitlines() == [
        f"blockyard: {cfg}:4: controller[0]: missing required key 'type'",
        f"blockyard: {cfg}:6: controller[0].tpye: unknown key (did you mean 'type'?)"]
    assert not (tmp_path / "s" / "registry.sqlite").exists()  # nothing touched


def test_config_declares_controllers_and_attachments(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[[controller]]
name = "nv"
type = "nvme"
[[attachment]]
controller = "nv"
port = 3
medium = "{tmp_path / 'fast.vdi'}"
format = "vdi"
create_size = "16M"
write_mode = "readonly"
""")
    assert subprocess.run(command("config", "check", str(cfg)), capture_output=True,
                          env=ENV).returncode == 0
    srv = RegistryServer.start(tmp_path / "state", "--config", str(cfg))
    try:
        assert export_names(srv.port) == ["nv-3"]
        assert read_export(srv.port, "nv-3", 0, 4096) == bytes(4096)
        [m] = cli_json(srv.state, "medium", "list")
        assert (m["format"], m["write_mode"], m["virtual_size"]) == ("vdi", "readonly", 16 * MiB)
    finally:
        assert srv.stop() == 0


def test_control_socket_of_another_user_stops_the_start(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a socket to another uid")
    state = tmp_path / "state"
    state.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(state / "control.sock"))
    os.chown(state / "control.sock", 4321, 4321)
    r = subprocess.run(command("serve", "--state-dir", str(state), "--nbd", "127.0.0.1:0"),
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "belongs to uid 4321" in r.stderr
    r = cli(state, "medium", "list", check=2)
    assert "belongs to uid 4321, not to you" in r.stderr
    s.close()


def test_an_attached_medium_whose_file_vanished_does_not_stop_the_server(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_pattern(tmp_path / "gone.img", MiB, {})
    cli(state, "medium", "add", str(tmp_path / "gone.img"))  # no server: the database
    cli(state, "controller", "add", "s", "--type", "scsi")
    cli(state, "attach", "s", "--medium", "gone.img")
    os.unlink(tmp_path / "gone.img")
    srv = RegistryServer.start(state)
    try:
        assert export_names(srv.port) == ["demo"]
        m = next(m for m in cli_json(state, "medium", "list") if m["name"] == "gone.img")
        assert not m["accessible"] and "no such file" in m["last_error"]
        assert "Accessible:      no: " in cli(state, "medium", "info", "gone.img").stdout
    finally:
        assert srv.stop() == 0
