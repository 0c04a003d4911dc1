"""Helpers for the tests of local differencing images over a remote iSCSI LUN (no tests).

* ``Target.start(file, port=0)`` -- our quick-mode target, ``python -m blockyard serve
  FILE --iscsi 127.0.0.1:PORT``; ``url`` is the LUN it prints, ``stop()`` sends SIGTERM
  to that PID only and asserts a clean exit.  ``Target.chap(file, port, "user:secret")``
  is the standalone target (``python -m blockyard.transport.iscsi_target``), the one
  that asks for CHAP (quick mode has no ``--chap``).
* ``QuickNbd.start(file, env=...)`` -- ``blockyard serve FILE --nbd 127.0.0.1:0``;
  ``failed(file)`` runs it expecting it not to start (exit status, stderr).
* ``run(*args, env=...)`` -- ``python -m blockyard ARGS``; ``probe_uuid(url)`` the
  registry UUID of a LUN from ``iscsi probe --json`` (uuid5 of its VPD 83h identity).
* ``nbd_from(port, source, export)`` -- a libnbd handle whose socket is bound to
  ``source`` (127.0.0.1 or 127.0.0.2: two client identities for the write modes).
* ``wait_no_sessions(state, export)`` -- until the daemon has ended every session of
  ``export`` (a disconnect is seen by the server a moment later).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockyard.block.remote import REMOTE_NAMESPACE

MiB = 1 << 20
ENV = dict(os.environ, PYTHONUNBUFFERED="1")
ENV.pop("BLOCKYARD_STATE_DIR", None)
ENV.pop("BLOCKYARD_ISCSI_SECRET", None)
SERVING_RE = re.compile(r"^serving (iscsi://\S+)")
URL_RE = re.compile(r"^(iscsi://\S+)")
LISTEN_RE = re.compile(r"nbd: listening on ([0-9.]+):(\d+)")
DAEMON_CONFIG = """\
[nbd]
listen = ["127.0.0.1:0"]

[[controller]]
name = "net"
type = "sas"
host_cache = false
"""  # a registry daemon with one controller whose attachments are NBD exports


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_line(proc: subprocess.Popen[str], pattern: re.Pattern[str],
               timeout: float = 20) -> re.Match[str] | None:
    """The first stdout line matching ``pattern``; the rest of stdout is read on by a
    thread (so the pipe never fills)."""
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if proc.poll() is not None:
                return None
            continue
        m = pattern.search(line)
        if m:
            return m
    return None


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def _terminate(proc: subprocess.Popen[str], what: str) -> int:
    """SIGTERM to ``proc`` (ours, by PID) and its exit status; killed if it ignores it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"{what} ignored SIGTERM") from None
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Target:
    proc: subprocess.Popen[str]
    url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.split("/")[2].rpartition(":")[2])

    @classmethod
    def start(cls, disk: Path, port: int = 0) -> Target:
        return cls._run([sys.executable, "-m", "blockyard", "serve", str(disk),
                         "--iscsi", f"127.0.0.1:{port}"], disk, SERVING_RE)

    @classmethod
    def chap(cls, disk: Path, port: int, chap: str) -> Target:
        return cls._run([sys.executable, "-m", "blockyard.transport.iscsi_target", str(disk),
                         "--listen", f"127.0.0.1:{port}", "--chap", chap], disk, URL_RE)

    @classmethod
    def _run(cls, argv: list[str], disk: Path, ready: re.Pattern[str]) -> Target:
        log = disk.parent / f"target-{time.monotonic_ns()}.log"
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log.open("w"),
                                text=True, env=ENV)
        m = _wait_line(proc, ready)
        if m:
            return cls(proc, m.group(1), log)
        proc.kill()
        proc.wait()
        raise AssertionError(f"the iSCSI target did not start:\n{log.read_text()}")

    def stop(self) -> None:
        code = _terminate(self.proc, "the target")
        assert code == 0, self.log.read_text()


@dataclass
class QuickNbd:
    proc: subprocess.Popen[str]
    port: int
    log: Path

    @classmethod
    def start(cls, disk: Path, *extra: str, env: dict[str, str] | None = None,
              log_dir: Path | None = None) -> QuickNbd:
        log = (log_dir or disk.parent) / f"nbd-{time.monotonic_ns()}.log"
        proc = subprocess.Popen([sys.executable, "-m", "blockyard", "serve", str(disk), "--nbd",
                                 "127.0.0.1:0", "--log-level", "info", *extra],
                                stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
                                env=env or ENV)
        m = _wait_line(proc, LISTEN_RE)
        if m:
            return cls(proc, int(m.group(2)), log)
        proc.kill()
        proc.wait()
        raise AssertionError(f"quick mode did not start:\n{log.read_text()}")

    def connect(self, export: str) -> Any:
        import nbd

        h = nbd.NBD()
        h.connect_uri(f"nbd://127.0.0.1:{self.port}/{export}")
        return h

    def stop(self) -> None:
        code = _terminate(self.proc, "quick mode")
        log = self.log.read_text(errors="replace")
        assert code == 0 and "Traceback" not in log and " ERROR " not in log, log


def run(*args: str, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockyard", *args], capture_output=True,
                          text=True, env=env or ENV, timeout=timeout)


def failed(disk: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Quick mode over ``disk`` that must refuse to start (it exits by itself)."""
    return run("serve", str(disk), "--nbd", "127.0.0.1:0", env=env, timeout=30)


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    """A refusal: non-zero exit, exactly one line on stderr, no traceback, ``words`` in it."""
    assert r.returncode not in (0, None), (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def probe_uuid(url: str) -> str:
    """The UUID a LUN has as a medium and as a parent: uuid5 of its identity."""
    r = run("iscsi", "probe", url, "--json")
    assert r.returncode == 0, r.stderr
    identity = json.loads(r.stdout)["identity"]
    return str(uuid.uuid5(REMOTE_NAMESPACE, identity.lower()))


def nbd_from(port: int, source: str, export: str) -> Any:
    import nbd

    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_socket(sock.detach())
    return h


def sessions(state: Path) -> list[dict[str, Any]]:
    from blockyard.cli.client import open_backend

    out = open_backend(state).call("live.sessions")
    return list(out)


def wait_no_sessions(state: Path, export: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(export in json.dumps(s) for s in sessions(state)):
            return
        time.sleep(0.02)
    raise AssertionError(f"sessions of {export} did not end: {sessions(state)}")


def image_check(path: Path) -> None:
    """``blockyard medium check``: no errors (qemu-img refuses a differencing VDI:
    "unsupported VDI image (non-NULL link UUID)")."""
    r = run("medium", "check", str(path))
    assert r.returncode == 0 and "no errors" in r.stdout, (path, r.stdout, r.stderr)


def random_file(path: Path, size: int) -> bytes:
    """A raw file of ``size`` random bytes (the LUN's content, returned)."""
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def patched(data: bytes, *writes: dict[int, bytes]) -> bytes:
    """``data`` with each dict of writes (offset: bytes) applied in order."""
    out = bytearray(data)
    for w in writes:
        for off, chunk in w.items():
            out[off:off + len(chunk)] = chunk
    return bytes(out)
