#!/usr/bin/env python3
"""A bandwidth group shared by two NBD clients, measured with fio's nbd engine.

The server runs in this process (until ``blockyard serve`` can put media in a
group): NbdServer on 127.0.0.1 port 0, two exports ``a`` and ``b`` -- two
media of one group, as VirtualBox puts two disks in one group -- each a
``ThrottleLayer`` over the same raw file, both charged to one group.

1. ``--limit`` (default 20M, VBoxManage units) for ``--runtime`` seconds: two fio
   clients (one per export) read as fast as they can; prints the total and
   each client's share, from fio and from the group's own counters.
2. The same again, with ``set --new-limit`` (default 10M) half way through;
   prints the total rate in 250 ms windows around the change and how long
   the total took to follow.

    python benchmarks/bandwidth_groups.py
    python benchmarks/bandwidth_groups.py --limit 40M --new-limit 5M --runtime 6
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import MiB, format_table, parse_fio_job, random_file, work_dir  # noqa: E402

from blockyard.block.bandwidth import BandwidthGroups  # noqa: E402
from blockyard.block.layer import Layer  # noqa: E402
from blockyard.block.raw import RawFile  # noqa: E402
from blockyard.transport.nbd_server import Export, ExportTable, NbdServer  # noqa: E402
from blockyard.util.limits import parse_limit  # noqa: E402


class InProcessNbd:
    """NbdServer on 127.0.0.1:0 in a thread with its own event loop."""

    def __init__(self, exports: Callable[[], list[Export]]) -> None:
        self._exports = exports
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = NbdServer(ExportTable(self._exports()))
        _, self.port = await server.listen("127.0.0.1", 0)
        self._ready.set()
        await self._stop.wait()
        await server.stop(grace=5)
        for export in server.exports:
            await export.layer.close()

    def __enter__(self) -> InProcessNbd:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("in-process NBD server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def call(self, func: Callable[[], Any]) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(func)

    def uri(self, name: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{name}"


def start_fio(name: str, uri: str, runtime: float, rw: str = "read", bs: str = "256k",
              iodepth: int = 8, cwd: Path | None = None) -> subprocess.Popen[str]:
    cmd = ["fio", "--output-format=json", f"--name={name}", "--ioengine=nbd", f"--uri={uri}",
           f"--rw={rw}", f"--bs={bs}", f"--iodepth={iodepth}", "--numjobs=1", "--time_based",
           f"--runtime={runtime}s", "--norandommap", "--randrepeat=0"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, stdin=subprocess.DEVNULL)


def finish_fio(proc: subprocess.Popen[str], timeout: float) -> Any:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"fio failed ({proc.returncode}): {err.strip()}")
    return parse_fio_job(json.loads(out[out.index("{"):])["jobs"][0])


class Sampler:
    """Records (time, bytes admitted per session) every ``interval`` on the server loop."""

    def __init__(self, groups: BandwidthGroups, name: str, sessions: list[str],
                 interval: float = 0.05) -> None:
        self.group = groups.get(name)
        self.sessions = sessions
        self.interval = interval
        self.samples: list[tuple[float, list[int]]] = []
        self.marks: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(),
                                 [self.group.admitted(s) for s in self.sessions]))
            await asyncio.sleep(self.interval)

    def rate(self, t0: float, t1: float) -> list[float]:
        """MiB/s per session between two times (nearest samples)."""
        a = min(self.samples, key=lambda s: abs(s[0] - t0))
        b = min(self.samples, key=lambda s: abs(s[0] - t1))
        dt = max(b[0] - a[0], 1e-9)
        return [(y - x) / dt / MiB for x, y in zip(a[1], b[1], strict=True)]


def run_pair(server: InProcessNbd, runtime: float, logs: Path,
             midway: Callable[[], None] | None = None) -> list[Any]:
    procs = [start_fio(n, server.uri(n), runtime, cwd=logs) for n in ("a", "b")]
    if midway is not None:
        time.sleep(runtime / 2)
        midway()
    return [finish_fio(p, runtime + 60) for p in procs]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", default="20M", help="group limit (VBoxManage units)")
    p.add_argument("--new-limit", default="10M", help="limit set half way through run 2")
    p.add_argument("--runtime", type=float, default=10.0, help="seconds per fio run")
    p.add_argument("--size", type=int, default=256, help="image size in MiB")
    args = p.parse_args()
    limit, new_limit = parse_limit(args.limit), parse_limit(args.new_limit)
    groups = BandwidthGroups()
    groups.add("bench", limit)
    sampler = Sampler(groups, "bench", ["a", "b"])
    with work_dir("blockyard-bw-") as d:
        image = random_file(d / "disk.raw", args.size * MiB)

        def exports() -> list[Export]:
            raw: Layer = RawFile(image)
            sampler.start()
            return [Export(n, groups.wrap(raw, "bench", n)) for n in ("a", "b")]

        with InProcessNbd(exports) as server:
            report_shares(server, sampler, args, limit, d)
            report_set(server, groups, sampler, args, new_limit, d)
    return 0


def report_shares(server: InProcessNbd, sampler: Sampler, args: argparse.Namespace,
                  limit: int, logs: Path) -> None:
    t0 = time.monotonic()
    fio = run_pair(server, args.runtime, logs)
    t1 = time.monotonic()
    server_rates = sampler.rate(t0 + 1, t1 - 1)  # steady state, without start and end
    total_fio = sum(f.mib_s for f in fio)
    rows = [[name, f"{f.mib_s:.2f}", f"{100 * f.mib_s / total_fio:.1f}%", f"{r:.2f}"]
            for name, f, r in zip("ab", fio, server_rates, strict=True)]
    rows.append(["total", f"{total_fio:.2f}", "100%", f"{sum(server_rates):.2f}"])
    print(f"run 1: group limit {args.limit} = {limit / MiB:.2f} MiB/s, two fio clients "
          f"(nbd engine, read, bs 256k, QD8) for {args.runtime:g} s")
    print(format_table(["client", "fio MiB/s", "share", "server MiB/s (steady)"], rows))
    print()


def report_set(server: InProcessNbd, groups: BandwidthGroups, sampler: Sampler,
               args: argparse.Namespace, new_limit: int, logs: Path) -> None:
    changed: list[float] = []

    def change() -> None:
        changed.append(time.monotonic())
        server.call(lambda: groups.set("bench", new_limit))

    run_pair(server, args.runtime, logs, midway=change)
    t_set = changed[0]
    rows, settled = [], None
    step = 0.25
    for k in range(-8, 12):
        a, b = t_set + k * step, t_set + (k + 1) * step
        total = sum(sampler.rate(a, b))
        rows.append([f"{k * step:+.2f} .. {(k + 1) * step:+.2f}", f"{total:.2f}"])
        if k >= 0 and settled is None and total <= new_limit / MiB * 1.15:
            settled = b - t_set
    print(f"run 2: set {args.new_limit} ({new_limit / MiB:.2f} MiB/s) after "
          f"{args.runtime / 2:g} s; total admitted rate in 250 ms windows (t = 0 at set)")
    print(format_table(["window (s)", "total MiB/s"], rows))
    shown = f"{settled:.2f} s" if settled is not None else "not within 3 s"
    print(f"total at or under the new limit (+15%) from the window ending {shown} after set")
    return None


if __name__ == "__main__":
    sys.exit(main())
