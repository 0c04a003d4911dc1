"""fio's nbd engine against blockyard: 4 jobs (4 connections) write and verify crc32c."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nbd_helpers import MiB, run, sparse_file, write_at

pytestmark = [pytest.mark.interop, pytest.mark.peers("fio")]

JOBS = 4
PER_JOB = 24 * MiB  # 96 MiB in all


def _fio(uri: str, tmp_path: Path, *args: str, check: bool = True) -> dict:  # type: ignore[type-arg]
    out = tmp_path / "fio.json"
    res = run(["fio", "--name=verify", "--ioengine=nbd", f"--uri={uri}", f"--numjobs={JOBS}",
         f"--size={PER_JOB}", f"--offset_increment={PER_JOB}", "--iodepth=16",
         "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--group_reporting=0",
         "--output-format=json", f"--output={out}", *args], timeout=240, check=check, cwd=tmp_path)
    report = json.loads(out.read_text())
    report["returncode"] = res.returncode
    return report  # type: ignore[no-any-return]


def _check_jobs(report: dict, key: str) -> None:  # type: ignore[type-arg]
    jobs = report["jobs"]
    assert len(jobs) == JOBS
    for job in jobs:
        assert job["error"] == 0, job
        assert job[key]["io_bytes"] >= PER_JOB, (key, job[key]["io_bytes"])


def test_fio_random_write_then_verify(nbd_server, tmp_path: Path) -> None:
    uri = nbd_server(sparse_file(tmp_path / "disk.img", JOBS * PER_JOB)).uri("disk")
    report = _fio(uri, tmp_path, "--rw=randwrite", "--bsrange=4k-64k", "--bs_unaligned=0")
    _check_jobs(report, "write")
    # verification reads everything back: at least as many bytes as were written
    assert all(job["read"]["io_bytes"] >= PER_JOB for job in report["jobs"])


def test_fio_verify_only_pass_after_sequential_write(nbd_server, tmp_path: Path) -> None:
    """Write with one run, verify with a second run on new connections; then corrupt
    one block behind the server's back and check that fio notices."""
    path = sparse_file(tmp_path / "disk.img", JOBS * PER_JOB)
    uri = nbd_server(path).uri("disk")
    _check_jobs(_fio(uri, tmp_path, "--rw=write", "--bs=1M", "--do_verify=0"), "write")
    report = _fio(uri, tmp_path, "--rw=read", "--bs=1M", "--verify_only=1")
    assert all(job["error"] == 0 for job in report["jobs"])
    assert sum(job["read"]["io_bytes"] for job in report["jobs"]) >= JOBS * PER_JOB
    write_at(path, 2 * PER_JOB + 5 * MiB + 100, b"corrupted")
    bad = _fio(uri, tmp_path, "--rw=read", "--bs=1M", "--verify_only=1", check=False)
    assert bad["returncode"] != 0, "fio should have found the corrupted block"
