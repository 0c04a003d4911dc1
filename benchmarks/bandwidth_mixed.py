#!/usr/bin/env python3
"""One bandwidth group shared by NBD and iSCSI clients of the real daemon.

``blockyard serve --config FILE`` (the registry daemon, a subprocess) serves one
raw medium (random data, write mode shareable) as NBD export ``disk`` and as
LUN 0 of target ``iqn.2026-11.org.blockyard:bench``, in bandwidth group
``mixed`` (``--limit``, default 20M = 20 MiB/s, VBoxManage units).

1. For ``--runtime`` seconds two fio clients (``--ioengine=nbd``, read, bs 256k,
   QD8) and one iSCSI client (libiscsi's ``iscsi-perf``, 256 KiB reads, 8 in
   flight) read as fast as they can.  Prints the total and each client's
   share, from the group's own counters (bytes admitted per session key,
   polled through the control API) and from the clients.
2. The same again; half way through, ``blockyard bandwidth set mixed --limit
   --new-limit`` (default 10M) runs as a command (through the control API).
   Prints the total in 250 ms windows around the change and how long the total
   took to follow.

    python benchmarks/bandwidth_mixed.py
    python benchmarks/bandwidth_mixed.py --limit 40M --new-limit 5M --runtime 6
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from bandwidth_groups import finish_fio, start_fio  # noqa: E402
from common import (  # noqa: E402
    MiB,
    Server,
    format_table,
    random_file,
    start_server,
    work_dir,
)

from blockyard.cli.client import RemoteBackend  # noqa: E402
from blockyard.errors import BlockyardError  # noqa: E402
from blockyard.util.limits import parse_limit  # noqa: E402

GROUP = "mixed"
INITIATOR = "iqn.2026-11.org.blockyard:bench-perf"
TARGET = "iqn.2026-11.org.blockyard:bench"

CONFIG = """\
[nbd]
listen = ["127.0.0.1:0"]

[iscsi]
listen = ["127.0.0.1:0"]

[[bandwidth_group]]
name = "{group}"
limit = "{limit}"

[[controller]]
name = "bench"
type = "sata"

[[attachment]]
controller = "bench"
port = 0
medium = "{image}"
name = "disk"
format = "raw"
write_mode = "shareable"
bandwidth_group = "{group}"
"""


def blockyard(*args: str) -> list[str]:
    return [sys.executable, "-m", "blockyard", *args]


def start_daemon(work: Path, limit: str, image: Path) -> tuple[Server, int, int]:
    """The daemon on 127.0.0.1 port 0 for NBD and iSCSI: (server, NBD port, iSCSI port)."""
    cfg = work / "bench.toml"
    cfg.write_text(CONFIG.format(group=GROUP, limit=limit, image=image))
    cmd = blockyard("serve", "--config", str(cfg), "--state-dir", str(work / "state"))
    server = start_server("blockyard", cmd, work / "server.log", uri="{port}",
                          ready_line=r"nbd: listening on 127\.0\.0\.1:(?P<port>\d+)")
    api = RemoteBackend(work / "state" / "control.sock", timeout=5)
    for _ in range(300):  # iSCSI and the control socket come right after NBD
        found = re.search(r"iscsi: listening on 127\.0\.0\.1:(\d+)", server.log())
        try:
            if found and api.call("live.health"):
                return server, int(server.uri), int(found.group(1))
        except BlockyardError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"the daemon did not start:\n{server.log()}")


class Sampler(threading.Thread):
    """Polls the group's bytes admitted per session key every ``interval`` seconds."""

    def __init__(self, sock: Path, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.api = RemoteBackend(sock, timeout=5)
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            t = time.monotonic()
            row = next(g for g in self.api.call("bandwidth.list") if g["name"] == GROUP)
            self.samples.append(((t + time.monotonic()) / 2, dict(row["sessions"])))
            time.sleep(max(0.0, self.interval - (time.monotonic() - t)))

    def rates(self, t0: float, t1: float) -> dict[str, float]:
        """MiB/s per session key between two times (nearest samples)."""
        a = min(self.samples, key=lambda s: abs(s[0] - t0))
        b = min(self.samples, key=lambda s: abs(s[0] - t1))
        dt = max(b[0] - a[0], 1e-9)
        return {k: (v - a[1].get(k, 0)) / dt / MiB for k, v in b[1].items()}


def start_perf(url: str, runtime: float) -> subprocess.Popen[str]:
    cmd = ["iscsi-perf", "-i", INITIATOR, "-m", "8", "-b", "512", "-t", str(int(runtime)), url]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)


def finish_perf(proc: subprocess.Popen[str], runtime: float) -> float | None:
    """iscsi-perf's own average MB/s (libiscsi's MB = 10^6 bytes), as MiB/s."""
    try:
        out, _ = proc.communicate(timeout=runtime + 30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    found = re.findall(r"iops average \d+ \((\d+) MB/s\)", out)
    return int(found[-1]) * 1e6 / MiB if found else None


def run_clients(nbd_uri: str, iscsi_url: str, runtime: float, logs: Path,
                midway: Any = None) -> tuple[list[Any], float | None]:
    fios = [start_fio(n, nbd_uri, runtime, cwd=logs) for n in ("nbd-a", "nbd-b")]
    perf = start_perf(iscsi_url, runtime)
    if midway is not None:
        time.sleep(runtime / 2)
        midway()
    return [finish_fio(p, runtime + 60) for p in fios], finish_perf(perf, runtime)


def label(key: str) -> str:
    return "iscsi-perf" if key.startswith("iscsi:") else f"fio {key}"


def report_shares(sampler: Sampler, fios: list[Any], perf: float | None, t0: float,
                  t1: float, args: argparse.Namespace, limit: int) -> None:
    rates = sampler.rates(t0 + 1, t1 - 1)  # steady state, without start and end
    rates = {k: v for k, v in rates.items() if v > 0}
    total = sum(rates.values())
    rows = [[label(k), f"{v:.2f}", f"{100 * v / total:.1f}%"] for k, v in sorted(rates.items())]
    rows.append(["total", f"{total:.2f}", f"{100 * total / (limit / MiB):.1f}% of limit"])
    print(f"run 1: group {GROUP!r} limit {args.limit} = {limit / MiB:.2f} MiB/s; two fio NBD "
          f"clients + iscsi-perf, reading for {args.runtime:g} s through the daemon")
    print(format_table(["client (server's counters)", "MiB/s", "share"], rows))
    client_side = [f"fio nbd-a {fios[0].mib_s:.2f}", f"fio nbd-b {fios[1].mib_s:.2f}",
                   f"iscsi-perf {perf:.2f}" if perf is not None else "iscsi-perf ?"]
    print("clients' own averages (whole run, MiB/s): " + ", ".join(client_side))
    ok_total = abs(total - limit / MiB) <= 0.05 * limit / MiB
    ok_share = all(25 <= 100 * v / total <= 42 for v in rates.values()) and len(rates) == 3
    print(f"total within 5% of the limit: {'yes' if ok_total else 'NO'}; "
          f"each share 25-42%: {'yes' if ok_share else 'NO'}\n")


def report_set(sampler: Sampler, t_set: float, t_done: float, args: argparse.Namespace,
               new_limit: int) -> None:
    rows, settled, step = [], None, 0.25
    for k in range(-8, 12):
        a, b = t_set + k * step, t_set + (k + 1) * step
        total = sum(sampler.rates(a, b).values())
        rows.append([f"{k * step:+.2f} .. {(k + 1) * step:+.2f}", f"{total:.2f}"])
        if k >= 0 and settled is None and total <= new_limit / MiB * 1.15:
            settled = b - t_set
    print(f"run 2: `blockyard bandwidth set {GROUP} --limit {args.new_limit}` "
          f"({new_limit / MiB:.2f} MiB/s) at t=0, half way through; the command took "
          f"{t_done - t_set:.3f} s")
    print(format_table(["window (s from set)", "total MiB/s"], rows))
    if settled is None:
        print("total at or under the new limit (+15%): not within the windows shown")
        return
    print(f"total at or under the new limit (+15%) by the end of the window ending "
          f"{settled:.2f} s after the command started, {settled - (t_done - t_set):.2f} s "
          "after it returned")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", default="20M", help="group limit (VBoxManage units)")
    p.add_argument("--new-limit", default="10M", help="limit set half way through run 2")
    p.add_argument("--runtime", type=float, default=10.0, help="seconds per run")
    p.add_argument("--size", type=int, default=256, help="image size in MiB")
    args = p.parse_args()
    limit, new_limit = parse_limit(args.limit), parse_limit(args.new_limit)
    with work_dir("blockyard-bwmix-") as d:
        image = random_file(d / "disk.raw", args.size * MiB)
        server, nbd_port, iscsi_port = start_daemon(d, args.limit, image)
        try:
            sampler = Sampler(d / "state" / "control.sock")
            sampler.start()
            nbd_uri = f"nbd://127.0.0.1:{nbd_port}/disk"
            iscsi_url = f"iscsi://127.0.0.1:{iscsi_port}/{TARGET}/0"
            t0 = time.monotonic()
            fios, perf = run_clients(nbd_uri, iscsi_url, args.runtime, d)
            report_shares(sampler, fios, perf, t0, time.monotonic(), args, limit)
            marks: list[float] = []

            def change() -> None:
                marks.append(time.monotonic())
                subprocess.run(blockyard("bandwidth", "set", GROUP, "--limit", args.new_limit,
                                         "--state-dir", str(d / "state")), check=True,
                               stdout=subprocess.DEVNULL)
                marks.append(time.monotonic())

            run_clients(nbd_uri, iscsi_url, args.runtime, d, midway=change)
            sampler.running = False
            report_set(sampler, marks[0], marks[1], args, new_limit)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
