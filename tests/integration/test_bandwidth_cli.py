"""``blockyard bandwidth add|set|remove|list`` end to end on the JSON store: in process
through ``register`` and as a subprocess (exit statuses, one-line errors)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blockyard.cli import bandwidth as cli
from blockyard.errors import BlockyardError, ConflictError

MiB = 1 << 20


def run(state: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bandwidth", *argv, "--state-dir", str(state)])
    return args.func(args)


def run_proc(state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, BLOCKYARD_STATE_DIR=str(state))
    return subprocess.run([sys.executable, "-m", "blockyard.cli.bandwidth", *argv],
                          capture_output=True, text=True, env=env, timeout=60)


def test_add_set_list_remove(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert run(tmp_path, "add", "Limit", "--limit", "20M") == 0
    assert run(tmp_path, "add", "net", "--limit", "100m") == 0
    assert run(tmp_path, "set", "Limit", "--limit", "10M") == 0
    capsys.readouterr()
    assert run(tmp_path, "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"name": "Limit", "limit": 10 * MiB, "limit_text": "10M"},
                    {"name": "net", "limit": 12_500_000, "limit_text": "100m"}]
    assert run(tmp_path, "list") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["NAME", "LIMIT", "BYTES/S"]
    assert table[1].split() == ["Limit", "10M", str(10 * MiB)]
    assert run(tmp_path, "remove", "net") == 0
    capsys.readouterr()
    assert run(tmp_path, "list", "--json") == 0  # whatever the store (registry by default)
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["Limit"]


def test_the_store_refuses_removal_while_media_use_a_group(tmp_path: Path) -> None:
    store = cli.JsonFileStore(tmp_path / "g.json", users=lambda name: ["disk1.vdi"])
    store.add("g", MiB)
    with pytest.raises(ConflictError, match="used by: disk1.vdi"):
        store.remove("g")


def test_a_plugged_in_store_is_used(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[tuple[str, ...]] = []

    class Recorder:
        def add(self, name: str, limit: int) -> None:
            calls.append(("add", name, str(limit)))

        def set(self, name: str, limit: int) -> None:
            calls.append(("set", name, str(limit)))

        def remove(self, name: str) -> None:
            calls.append(("remove", name))

        def list(self) -> list[tuple[str, int]]:
            return []

    monkeypatch.setattr(cli, "STORE_FACTORY", lambda state: Recorder())
    run(tmp_path, "add", "g", "--limit", "1G")
    run(tmp_path, "set", "g", "--limit", "0")
    run(tmp_path, "remove", "g")
    assert calls == [("add", "g", str(1 << 30)), ("set", "g", "0"), ("remove", "g")]
    assert not (tmp_path / cli.STORE_FILE).exists()


@pytest.mark.parametrize("argv,status,words", [
    (["add", "x", "--limit=-5M"], 2, "negative"),
    (["add", "x", "--limit", "fast"], 2, "cannot parse"),
    (["add", "x", "--limit", "5000G"], 2, "absurd"),
    (["add", "bad name", "--limit", "1M"], 2, "bad bandwidth group name"),
    (["set", "missing", "--limit", "1M"], 3, "no bandwidth group named 'missing'"),
    (["remove", "missing"], 3, "no bandwidth group"),
])
def test_errors_are_one_line_with_the_right_status(tmp_path: Path, argv: list[str],
                                                   status: int, words: str) -> None:
    res = run_proc(tmp_path, *argv)
    assert res.returncode == status, res.stderr
    assert res.stderr.count("\n") == 1 and words in res.stderr
    assert res.stderr.startswith("blockyard: ") and "Traceback" not in res.stderr


def test_subprocess_round_trip_and_duplicate(tmp_path: Path) -> None:
    assert run_proc(tmp_path, "add", "g", "--limit", "20").returncode == 0
    dup = run_proc(tmp_path, "add", "g", "--limit", "20")
    assert dup.returncode == 6 and "already exists" in dup.stderr
    out = run_proc(tmp_path, "list", "--json")
    assert json.loads(out.stdout) == [{"name": "g", "limit": 20 * MiB, "limit_text": "20M"}]


def test_a_corrupt_store_is_a_one_line_config_error(tmp_path: Path) -> None:
    (tmp_path / cli.STORE_FILE).write_text("{not json")
    with pytest.raises(BlockyardError, match="not a bandwidth group file"):
        cli.json_store(tmp_path).list()
    (tmp_path / cli.STORE_FILE).write_text('{"groups": {"g": -1}}')
    with pytest.raises(BlockyardError, match="not a bandwidth group file"):
        cli.json_store(tmp_path).list()
