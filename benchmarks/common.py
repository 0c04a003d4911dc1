"""Shared helpers for blockyard's benchmarks.

* ``work_dir()``: a temporary directory under /var/tmp, removed afterwards;
* ``random_file()``: a file of random data, written once;
* ``Server`` / ``start_server()``: a server subprocess bound to 127.0.0.1,
  waited for (a line on stdout or a TCP port) and stopped by its PID only;
* ``free_port()``, ``wait_port()``;
* ``Fio`` / ``run_fio()``: one fio run with JSON output, parsed into numbers;
* ``format_table()``: a plain-text table, ``ratio()`` for "x.xx" cells.

Nothing here knows about NBD or iSCSI in particular: the benchmark scripts
build the command lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1 << 20
GiB = 1 << 30
WORK_ROOT = Path(os.environ.get("BLOCKYARD_BENCH_DIR", "/var/tmp"))


# ---- files ---------------------------------------------------------------------------
@contextlib.contextmanager
def work_dir(prefix: str = "blockyard-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=WORK_ROOT))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def random_file(path: Path, size: int, chunk: int = 16 * MiB) -> Path:
    """Write ``size`` random bytes to ``path`` (fully allocated, fsynced)."""
    with open(path, "wb") as f:
        for pos in range(0, size, chunk):
            f.write(os.urandom(min(chunk, size - pos)))
        f.flush()
        os.fsync(f.fileno())
    return path


def warm_page_cache(path: Path, chunk: int = 8 * MiB) -> None:
    """Read a file once so that every server starts with it in the page cache."""
    with open(path, "rb", buffering=0) as f:
        while f.read(chunk):
            pass


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if not match:
        raise ValueError(f"bad size {text!r} (want e.g. 512M, 1G)")
    return int(match.group(1)) << (10 * " KMGT".index(match.group(2).upper() or " "))


# ---- servers -------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def wait_line(proc: subprocess.Popen[bytes], pattern: str, timeout: float) -> re.Match[str]:
    """Read the server's stdout until a line matches ``pattern``."""
    assert proc.stdout is not None
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().decode(errors="replace")
            if not line:
                break
            seen.append(line)
            if match := re.search(pattern, line):
                return match
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"server never printed /{pattern}/; stdout was: {''.join(seen)!r}")


@dataclass
class Server:
    """A server subprocess; ``stop()`` signals its PID only."""

    name: str
    proc: subprocess.Popen[bytes]
    uri: str
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _pinned(cpus: set[int] | None) -> Any:
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def start_server(name: str, cmd: Sequence[str], log_path: Path, *, uri: str = "",
                 port: int | None = None, ready_line: str | None = None,
                 timeout: float = 30.0, cpus: set[int] | None = None) -> Server:
    """Start ``cmd``; ready when stdout matches ``ready_line`` (whose ``port`` group
    fills ``{port}`` in ``uri``) or when ``port`` accepts connections."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL, preexec_fn=_pinned(cpus))
    try:
        if ready_line is not None:
            match = wait_line(proc, ready_line, timeout)
            port = int(match.group("port"))
        if port is None:
            raise ValueError("give ready_line or port")
        wait_port("127.0.0.1", port, proc, timeout)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise
    return Server(name, proc, uri.format(port=port), log_path, {"cmd": list(cmd)})


# ---- fio -------------------------------------------------------------------------------
@dataclass
class Fio:
    """The numbers of one fio job (its read or write side, whichever moved data)."""

    mib_s: float
    iops: float
    lat_mean_us: float
    lat_p99_us: float
    raw: dict[str, Any]


def run_fio(options: dict[str, Any], *, timeout: float | None = None,
            cpus: set[int] | None = None, cwd: Path | None = None) -> Fio:
    """Run one fio job given as ``{option: value}`` (value None = bare flag), in
    ``cwd`` (fio may leave state files in its working directory)."""
    args = ["fio", "--output-format=json"]
    for key, value in options.items():
        args.append(f"--{key}" if value is None else f"--{key}={value}")
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                         stdin=subprocess.DEVNULL, preexec_fn=_pinned(cpus))
    if res.returncode != 0:
        raise RuntimeError(f"fio failed ({res.returncode}): {res.stderr.strip()}\n"
                           f"{' '.join(args)}")
    report = json.loads(res.stdout[res.stdout.index("{"):])
    return parse_fio_job(report["jobs"][0])


def parse_fio_job(job: dict[str, Any]) -> Fio:
    if job.get("error"):
        raise RuntimeError(f"fio job {job.get('jobname')} failed: error {job['error']}")
    side = max(("read", "write"), key=lambda s: job[s]["io_bytes"])
    data = job[side]
    pct = data.get("clat_ns", {}).get("percentile", {})
    return Fio(mib_s=data["bw_bytes"] / MiB, iops=data["iops"],
               lat_mean_us=data["lat_ns"]["mean"] / 1000,
               lat_p99_us=pct.get("99.000000", 0) / 1000, raw=job)


def tool_version(cmd: Sequence[str]) -> str:
    try:
        res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    return (res.stdout or res.stderr).strip().splitlines()[0] if res.returncode == 0 else "?"


# ---- output -----------------------------------------------------------------------------
def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned first column, right-aligned numbers, a rule under the header."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first] + [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)])
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
    return str(value)
