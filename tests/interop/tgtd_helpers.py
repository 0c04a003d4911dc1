"""A private Debian ``tgtd`` for initiator tests (docs/security-initiator-mount.md §2.5).

``Tgtd(workdir).start()`` runs ``tgtd -f --iscsi portal=127.0.0.1:PORT -C N``
with a free TCP port and a control socket number ``N`` nobody else holds
(``/var/run/tgtd/socket.N.lock`` is probed with a non-blocking lock; a
daemon that still fails to start is retried with another number).  It is
configured with ``tgtadm -C N`` and stopped by PID in the order tgtd
accepts: drop connections, delete targets, ``--op delete --mode system``,
SIGTERM, wait (SIGKILL only if it will not go); then its socket files go.
Never by name: other engineers run their own tgtd.
"""

from __future__ import annotations

import contextlib
import fcntl
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

LOCK_DIR = Path("/var/run/tgtd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _control_free(n: int) -> bool:
    lock = LOCK_DIR / f"socket.{n}.lock"
    if not lock.exists():
        return True
    try:
        with open(lock, "a") as f:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.lockf(f, fcntl.LOCK_UN)
    except OSError:
        return False
    return True


class TgtdError(RuntimeError):
    pass


class Tgtd:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.control = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "tgtd.log"
        self.tids: set[int] = set()
        self.accounts: set[str] = set()

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> Tgtd:
        for _ in range(10):
            n = random.randint(10000, 30000)  # tgtd refuses -C values above 32767
            if not _control_free(n):
                continue
            self.port, self.control = free_port(), n
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    ["tgtd", "-f", "--iscsi", f"portal=127.0.0.1:{self.port}", "-C", str(n)],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            if self._wait_ready():
                return self
            self._kill()
        raise TgtdError(f"tgtd would not start; see {self.log}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            ok = subprocess.run(["tgtadm", "-C", str(self.control), "--lld", "iscsi", "--op",
                                 "show", "--mode", "target"], capture_output=True).returncode
            if ok == 0:
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", self.port), timeout=1):
                    return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        for tid in sorted(self.tids):
            for _ in range(50):
                self.drop_connections(tid)
                if self.adm("--op", "delete", "--mode", "target", "--tid", str(tid),
                            check=False).returncode == 0:
                    break
                time.sleep(0.1)
        self.tids.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.adm("--op", "delete", "--mode", "system", check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self._kill()

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for name in (f"socket.{self.control}", f"socket.{self.control}.lock"):
            with contextlib.suppress(OSError):  # tgtd leaves them behind; they were ours
                (LOCK_DIR / name).unlink()

    # ---- configuration ------------------------------------------------------------------
    def adm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise TgtdError(f"{' '.join(cmd)}: rc {done.returncode}: {done.stderr.strip()}")
        return done

    def add_target(self, tid: int, iqn: str, luns: dict[int, Path], *, thin: bool = False,
                   chap: tuple[str, str] | None = None,
                   mutual: tuple[str, str] | None = None) -> None:
        self.adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
        self.tids.add(tid)
        for lun, path in luns.items():
            self.adm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun),
                     "-b", str(path))
            if thin:
                self.adm("--op", "update", "--mode", "logicalunit", "--tid", str(tid),
                         "--lun", str(lun), "--params", "thin_provisioning=1")
        self.adm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", "ALL")
        for pair, outgoing in ((chap, False), (mutual, True)):
            if pair is None:
                continue
            if pair[0] not in self.accounts:
                self.adm("--op", "new", "--mode", "account", "--user", pair[0],
                         "--password", pair[1])
                self.accounts.add(pair[0])
            self.adm("--op", "bind", "--mode", "account", "--tid", str(tid), "--user", pair[0],
                     *(["--outgoing"] if outgoing else []))

    def set_param(self, tid: int, name: str, value: str) -> None:
        self.adm("--op", "update", "--mode", "target", "--tid", str(tid), "--name", name,
                 "--value", value)

    # ---- sessions ----------------------------------------------------------------------------
    def connections(self, tid: int) -> list[tuple[int, int]]:
        """(session id, connection id) of every live connection of target ``tid``."""
        out = self.adm("--op", "show", "--mode", "conn", "--tid", str(tid), check=False).stdout
        found = []
        sid = None
        for line in out.splitlines():
            if m := re.match(r"\s*Session:\s*(\d+)", line):
                sid = int(m.group(1))
            elif (m := re.match(r"\s*Connection:\s*(\d+)", line)) and sid is not None:
                found.append((sid, int(m.group(1))))
        return found

    def drop_connections(self, tid: int) -> int:
        """``--op delete --mode conn`` for every connection; how many were dropped."""
        conns = self.connections(tid)
        for sid, cid in conns:
            self.adm("--op", "delete", "--mode", "conn", "--tid", str(tid), "--sid", str(sid),
                     "--cid", str(cid), check=False)
        return len(conns)

    def url(self, iqn: str, lun: int, user: str = "", query: str = "") -> str:
        auth = f"{user}@" if user else ""
        return f"iscsi://{auth}127.0.0.1:{self.port}/{iqn}/{lun}" + (f"?{query}" if query else "")

    def __enter__(self) -> Tgtd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fill(path: Path, size: int, seed: int = 1) -> bytes:
    """A file of ``size`` bytes: random data with some zero runs; returns its content."""
    rnd = random.Random(seed)
    chunk = 1 << 20
    data = bytearray()
    for i in range(0, size, chunk):
        n = min(chunk, size - i)
        data += bytes(n) if i // chunk % 4 == 3 else rnd.randbytes(n)
    path.write_bytes(data)
    return bytes(data)
