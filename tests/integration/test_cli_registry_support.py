"""Helpers for the registry CLI tests (no tests here): the real ``blockyard`` command
in a subprocess, a registry server in the background, an NBD client to see what
is served.

``cli(state, *args)`` runs ``blockyard ARGS --state-dir STATE`` and returns the
``CompletedProcess``.  The command line is the real one (``blockyard.cli.main``);
the bootstrap only makes sure the registry groups are in ``GROUPS`` while the
lead has not listed them yet -- once listed, it changes nothing.

``RegistryServer.start(state)`` runs ``blockyard serve --state-dir STATE --nbd
127.0.0.1:0``, waits for ``control: listening``, and ``stop()`` sends SIGTERM to
that PID only.  ``read_export(port, name, offset, length)`` reads through libnbd.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOOT = (
    "import sys\n"
    "from blockyard.cli import GROUPS, main\n"
    "for g in ('blockyard.cli.controller', 'blockyard.cli.config_cmd'):\n"
    "    g in GROUPS or GROUPS.append(g)\n"
    "sys.argv[0] = 'blockyard'\n"
    "sys.exit(main())\n"
)
LISTEN_RE = re.compile(r"nbd: listening on ([0-9.]+):(\d+)")
ENV = dict(os.environ, PYTHONUNBUFFERED="1", BLOCKYARD_NO_UVLOOP="")
ENV.pop("BLOCKYARD_STATE_DIR", None)
MiB = 1 << 20


def command(*args: str) -> list[str]:
    return [sys.executable, "-c", BOOT, *args]


def cli(state: Path, *args: str, check: int | None = 0,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run one CLI command against ``state``; assert its exit status when ``check`` is set."""
    proc = subprocess.run(command(*args, "--state-dir", str(state)), capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=120)
    if check is not None:
        assert proc.returncode == check, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def cli_json(state: Path, *args: str) -> Any:
    return json.loads(cli(state, *args, "--json").stdout)


@dataclass
class RegistryServer:
    proc: subprocess.Popen[str]
    state: Path
    port: int
    lines: list[str] = field(default_factory=list)
    log: Path | None = None

    @classmethod
    def start(cls, state: Path, *extra: str) -> RegistryServer:
        log = state.parent / f"server-{state.name}-{time.monotonic_ns()}.log"
        proc = subprocess.Popen(
            command("serve", "--state-dir", str(state), "--nbd", "127.0.0.1:0", *extra),
            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=ENV)
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if proc.poll() is not None:
                    break
                continue
            seen.append(line)
            if line.startswith("control: listening on unix:"):
                port = next(int(m.group(2)) for m in map(LISTEN_RE.search, seen) if m)
                return cls(proc, state, port, seen, log)
        proc.kill()
        proc.wait()
        raise AssertionError(f"server did not start: {seen}\n{log.read_text()}")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server ignored SIGTERM") from None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    """Read the server's stdout to its end (so its pipe never fills)."""
    for line in stream:
        lines.put(line)


def connect(port: int, name: str) -> Any:
    import nbd

    h = nbd.NBD()
    h.connect_uri(f"nbd://127.0.0.1:{port}/{name}")
    return h


def read_export(port: int, name: str, offset: int, length: int) -> bytes:
    h = connect(port, name)
    try:
        return bytes(h.pread(length, offset))
    finally:
        h.shutdown()


def export_names(port: int) -> list[str]:
    import nbd

    h = nbd.NBD()
    h.set_opt_mode(True)
    h.connect_uri(f"nbd://127.0.0.1:{port}")
    names: list[str] = []
    h.opt_list(lambda name, _desc: names.append(name) or 0)
    h.opt_abort()
    return sorted(names)


def write_pattern(path: Path, size: int, chunks: dict[int, bytes]) -> None:
    """A sparse raw file of ``size`` bytes with ``chunks`` written at their offsets."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in chunks.items():
            f.seek(off)
            f.write(data)
