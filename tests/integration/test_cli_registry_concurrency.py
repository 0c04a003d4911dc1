"""Four CLI processes change the registry at once while a client reads.

With a server: the four go through the control API while an NBD client keeps
reading the demo export; without one: the four open the database themselves
(WAL, BEGIN IMMEDIATE, retry) while a fifth process keeps listing.  Either
way no update is lost, nobody sees "database is locked", and the registry is
consistent afterwards.
"""

from __future__ import annotations

import shlex
import subprocess
import threading
from pathlib import Path

import pytest
from test_cli_registry_support import ENV, RegistryServer, cli_json, command, connect

WORKERS = 4
PER_WORKER = 3


def _script(tmp: Path, w: int) -> list[list[str]]:
    """One worker: add media, describe them, attach half, race on a shared medium."""
    steps = []
    for i in range(PER_WORKER):
        f = tmp / f"w{w}-{i}.img"
        steps.append(["medium", "add", "--create", "1M", str(f)])
        steps.append(["medium", "modify", f.name, "--description", f"worker {w} item {i}"])
        if i % 2 == 0:
            steps.append(["attach", "bus", "--medium", f.name])
        steps.append(["medium", "modify", "shared.img", "--description", f"w{w}-{i}"])
    return steps


def _run_workers(state: Path, tmp: Path) -> list[subprocess.CompletedProcess[str]]:
    """Each worker is one shell loop of CLI processes, the four running at once."""
    procs = []
    for w in range(WORKERS):
        shell = " && ".join(shlex.join(command(*step, "--state-dir", str(state)))
                            for step in _script(tmp, w))
        procs.append(subprocess.Popen(["bash", "-c", shell], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=ENV))
    return [subprocess.CompletedProcess(p.args, p.wait(120), *p.communicate()) for p in procs]


def _check(state: Path, results: list[subprocess.CompletedProcess[str]]) -> None:
    for r in results:
        assert r.returncode == 0, r.stderr
        assert "locked" not in r.stderr.lower()
    media = {m["name"]: m for m in cli_json(state, "medium", "list")}
    for w in range(WORKERS):
        for i in range(PER_WORKER):
            assert media[f"w{w}-{i}.img"]["description"] == f"worker {w} item {i}"
    bus = next(c for c in cli_json(state, "controller", "list") if c["name"] == "bus")
    assert len(bus["attachments"]) == WORKERS * ((PER_WORKER + 1) // 2)
    assert len({a["port"] for a in bus["attachments"]}) == len(bus["attachments"])
    assert media["shared.img"]["description"].startswith("w")
    from blockyard.media.registry import Registry
    reg = Registry(state)
    try:
        assert reg.integrity() == []
    finally:
        reg.close()


def _prepare(state: Path, tmp: Path) -> None:
    cli_json(state, "controller", "add", "bus", "--type", "sas")
    cli_json(state, "medium", "add", "--create", "1M", str(tmp / "shared.img"))


def test_four_writers_through_the_server_while_a_client_reads(tmp_path: Path) -> None:
    pytest.importorskip("nbd")
    srv = RegistryServer.start(tmp_path / "state")
    try:
        _prepare(srv.state, tmp_path)
        stop = threading.Event()
        reads: list[int] = []
        errors: list[BaseException] = []

        def reader() -> None:
            h = connect(srv.port, "demo")
            try:
                while not stop.is_set():
                    reads.append(len(h.pread(1 << 20, (len(reads) % 64) << 20)))
            except BaseException as exc:
                errors.append(exc)
            finally:
                h.shutdown()
        t = threading.Thread(target=reader)
        t.start()
        results = _run_workers(srv.state, tmp_path)
        stop.set()
        t.join(20)
        assert not errors and len(reads) > 10
        _check(srv.state, results)
    finally:
        assert srv.stop() == 0


def test_four_writers_on_the_database_while_a_fifth_lists(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _prepare(state, tmp_path)
    lister = subprocess.Popen(
        ["bash", "-c", "for i in $(seq 5); do " + shlex.join(
            command("medium", "list", "--json", "--state-dir", str(state)))
         + " >/dev/null || exit 1; done"], stderr=subprocess.PIPE, text=True, env=ENV)
    results = _run_workers(state, tmp_path)
    assert lister.wait(120) == 0, lister.stderr.read() if lister.stderr else ""
    _check(state, results)
