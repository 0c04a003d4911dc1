"""Start blockyard as a subprocess for interop tests, plus small file helpers.

``start_server(files, workdir)`` runs ``python -m blockyard serve FILES --nbd
127.0.0.1:0``, waits for the ``nbd: listening on HOST:PORT`` line and returns
an ``NbdServerProc``; ``stop()`` sends SIGTERM to that PID only and checks the
exit status.  ``serving(...)`` is the same as a context manager.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LISTEN_RE = re.compile(rb"nbd: listening on ([0-9.]+):(\d+)")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
MiB = 1 << 20


@dataclass
class NbdServerProc:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def uri(self, name: str = "") -> str:
        return f"nbd://{self.host}:{self.port}/{name}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, check: bool = True) -> int:
        """SIGTERM by PID, wait, SIGKILL if it hangs; returns the exit status."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                if check:
                    raise AssertionError(f"server ignored SIGTERM for {STOP_TIMEOUT}s:\n"
                                         + self.log()) from None
        self.proc.stdout.close()  # type: ignore[union-attr]
        rc = self.proc.returncode
        if check and rc != 0:
            raise AssertionError(f"server exited with status {rc}:\n{self.log()}")
        return rc


def start_server(files: Sequence[Path], workdir: Path, *, read_only: bool = False,
                 extra: Sequence[str] = ()) -> NbdServerProc:
    log_path = workdir / f"blockyard-{time.monotonic_ns()}.log"
    cmd = [sys.executable, "-m", "blockyard", "serve", *map(str, files),
           "--nbd", "127.0.0.1:0", "--log-level", "warning", *extra]
    if read_only:
        cmd.append("--read-only")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL)
    try:
        host, port = _wait_listening(proc, log_path)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise
    return NbdServerProc(proc, host, port, log_path)


def _wait_listening(proc: subprocess.Popen[bytes], log_path: Path) -> tuple[str, int]:
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    seen = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            seen += line
            match = LISTEN_RE.search(line)
            if match:
                return match.group(1).decode(), int(match.group(2))
            if not line:
                break
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"blockyard did not start listening; stdout={seen!r}\n"
                       f"stderr:\n{log_path.read_text(errors='replace')}")


@contextlib.contextmanager
def serving(files: Sequence[Path], workdir: Path, **kw: object) -> Iterator[NbdServerProc]:
    server = start_server(files, workdir, **kw)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop(check=False)


def run(cmd: Sequence[str], timeout: float = 120.0, check: bool = True,
        **kw: object) -> subprocess.CompletedProcess[str]:
    """Run a peer tool; on failure the assertion shows its whole output."""
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> exit {res.returncode}\n"
                             f"stdout:\n{res.stdout}\nstderr:\n{res.stderr}")
    return res  # type: ignore[no-any-return]


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def fill_file(path: Path, size: int, byte: int) -> Path:
    """A fully allocated file of ``size`` bytes, every byte ``byte``."""
    chunk = bytes([byte]) * MiB
    with open(path, "wb") as f:
        for pos in range(0, size, MiB):
            f.write(chunk[: min(MiB, size - pos)])
    return path


def write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def data_ranges(path: Path) -> list[tuple[int, int]]:
    """Allocated ``(offset, length)`` ranges of a file, from SEEK_DATA/SEEK_HOLE."""
    out: list[tuple[int, int]] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end - start))
            pos = end
    finally:
        os.close(fd)
    return out
