"""Online snapshots in a real daemon, driven by the real CLI, while fio (nbd engine,
crc32c verify) writes: fio sees no error and no bad block, each snapshot holds exactly
the data flushed before it, and a merge under fio's writes keeps every block."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_cli_registry_support import RegistryServer, cli, cli_json, connect

from blockyard.block.chain_find import open_chain_file

pytest.importorskip("nbd")
MiB = 1 << 20
REGION_A = 4 * MiB  # ours: written, flushed, then snapshotted
FIO_OFF, FIO_SIZE = 8 * MiB, 32 * MiB


def _fio(uri: str, tmp: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["fio", "--name=online", "--ioengine=nbd", f"--uri={uri}", f"--offset={FIO_OFF}",
         f"--size={FIO_SIZE}", "--rw=randwrite", "--bs=4k", "--iodepth=8",
         "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--randseed=7",
         "--output-format=json", f"--output={tmp / 'fio.json'}", *extra],
        cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _fio_ok(proc: subprocess.Popen[str], tmp: Path) -> dict:  # type: ignore[type-arg]
    out, _ = proc.communicate(timeout=120)
    report = json.loads((tmp / "fio.json").read_text())
    assert proc.returncode == 0, out
    assert all(job["error"] == 0 for job in report["jobs"]), report["jobs"]
    return report  # type: ignore[no-any-return]


async def _region_a(path: str) -> bytes:
    chain = open_chain_file(path, read_only=True)  # a frozen image: safe to read beside
    try:
        return bytes(await chain.pread(0, REGION_A))
    finally:
        await chain.close()


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    if shutil.which("fio") is None:
        pytest.skip("SKIPPED LOUDLY: fio is missing (Debian package fio)")
    state = tmp_path / "state"
    server = RegistryServer.start(state)
    try:
        cli(state, "medium", "add", "--create", "48M", "--format", "vdi",
            str(tmp_path / "disk.vdi"))
        cli(state, "controller", "add", "c", "--type", "sata")
        cli(state, "attach", "c", "--medium", "disk.vdi")
        yield server
    finally:
        assert server.stop() == 0


async def test_online_snapshots_while_fio_writes(served: RegistryServer,
                                                 tmp_path: Path) -> None:
    state, uri = served.state, f"nbd://127.0.0.1:{served.port}/c-0"
    h = connect(served.port, "c-0")
    h.pwrite(b"1" * REGION_A, 0)
    h.flush()
    fio = _fio(uri, tmp_path, "--rate_iops=1200")  # about 7 s of writes
    time.sleep(0.8)
    assert fio.poll() is None
    first = cli_json(state, "snapshot", "take", "disk.vdi", "--name", "first")
    h.pwrite(b"2" * REGION_A, 0)  # after the snapshot: must not be in it
    h.flush()
    time.sleep(0.5)
    second = cli_json(state, "snapshot", "take", "disk.vdi", "--name", "second")
    h.pwrite(b"3" * REGION_A, 0)
    assert await _region_a(first["frozen"]) == b"1" * REGION_A
    assert await _region_a(second["frozen"]) == b"2" * REGION_A
    time.sleep(0.3)
    merged = cli_json(state, "snapshot", "delete", "disk.vdi", "first")  # under fio's writes
    assert merged["into"] == str(tmp_path / "disk.vdi") and merged["merged"] > 0
    assert fio.poll() is None, "fio finished before the snapshots: slow it down"
    _fio_ok(fio, tmp_path)
    assert bytes(h.pread(REGION_A, 0)) == b"3" * REGION_A
    h.shutdown()
    listing = cli_json(state, "snapshot", "list", "disk.vdi")
    assert [s["name"] for s in listing["snapshots"]] == ["second"]
    assert await _region_a(str(tmp_path / "disk.vdi")) == b"2" * REGION_A  # second's state
    _fio_ok(_fio(uri, tmp_path, "--verify_only=1"), tmp_path)  # every fio block survived
    cli_json(state, "snapshot", "delete", "disk.vdi", "second")  # merge the live top
    _fio_ok(_fio(uri, tmp_path, "--verify_only=1"), tmp_path)
    h = connect(served.port, "c-0")
    assert bytes(h.pread(REGION_A, 0)) == b"3" * REGION_A
    h.shutdown()
