#!/usr/bin/env python3
"""blockyard's iSCSI target vs Debian's tgtd over the same raw file.

Each round starts the servers one after another (never two at once; the
order alternates from round to round), each over the same raw file with a
warm page cache, and runs every workload against it with
``iscsi_loadgen`` (benchmarks/iscsi_loadgen.c, libiscsi's async API,
compiled with gcc into the work directory) and, for reads, also with
libiscsi's ``iscsi-perf``.  The table shows the median of the rounds.
See benchmarks/README.md for the meaning of each row.

    python benchmarks/iscsi_side_by_side.py                     # 1 GiB, 3 rounds of 10 s
    python benchmarks/iscsi_side_by_side.py --runtime 5 --rounds 5
    python benchmarks/iscsi_side_by_side.py --workloads rand-read-4k-qd32 --no-iscsi-perf
    python benchmarks/iscsi_side_by_side.py --format json > iscsi.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "interop"))

from common import (  # noqa: E402
    MiB,
    Server,
    format_table,
    parse_size,
    ratio,
    start_server,
    tool_version,
    warm_page_cache,
    work_dir,
)
from tgtd_helpers import Tgtd, TgtdError  # noqa: E402

SERVERS = ("blockyard", "tgtd")
TGT_IQN = "iqn.2026-11.org.blockyard.bench:tgtd"
BLOCK = 512  # both servers' logical block size (checked against READ CAPACITY by the loadgen)


@dataclass(frozen=True)
class Workload:
    name: str
    rw: str  # read | write
    pattern: str  # seq | rand
    bs: int
    qd: int
    tool: str = "loadgen"  # or iscsi-perf (reads only)


def _rows() -> tuple[Workload, ...]:
    base = (Workload("seq-read-1M-qd8", "read", "seq", MiB, 8),
            Workload("seq-write-1M-qd8", "write", "seq", MiB, 8),
            Workload("rand-read-4k-qd1", "read", "rand", 4096, 1),
            Workload("rand-read-4k-qd32", "read", "rand", 4096, 32),
            Workload("rand-write-4k-qd1", "write", "rand", 4096, 1),
            Workload("rand-write-4k-qd32", "write", "rand", 4096, 32))
    perf = tuple(Workload(w.name + " (iscsi-perf)", w.rw, w.pattern, w.bs, w.qd, "iscsi-perf")
                 for w in base if w.rw == "read")
    return base + perf


WORKLOADS = _rows()


@dataclass
class Run:
    """One workload against one server in one round."""

    mib_s: float
    iops: float
    lat_mean_us: float | None
    lat_p99_us: float | None
    cpu_us_per_io: float | None  # the server's CPU time (all threads) per completed command


# ---- the file ------------------------------------------------------------------------------
def write_image(path: Path, size: int, piece: int) -> Path:
    """``size`` random bytes written ``piece`` bytes at a time, then fsynced.

    The piece size matters on this kernel (6.x ext4 with large folios): the page
    cache keeps a file in folios as large as the writes that filled it, and a 4 KiB
    write into a cached 2 MiB folio cost about 25-30 us of kernel time here, against
    about 3 us into a 4 KiB folio.  That would swamp the 4 KiB write rows for both
    servers alike, so by default the file is written 4 KiB at a time (``--fill``)."""
    chunk = memoryview(os.urandom(16 * MiB))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for pos in range(0, size, len(chunk)):
            part = chunk[:min(len(chunk), size - pos)]
            for off in range(0, len(part), piece):
                os.write(fd, part[off:off + piece])
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


# ---- servers -------------------------------------------------------------------------------
class TgtdServer:
    """Debian's tgtd with its own control socket and port, the file as LUN 1 of one target."""

    def __init__(self, image: Path, workdir: Path) -> None:
        self.tgtd = Tgtd(workdir).start()
        try:
            self.tgtd.add_target(1, TGT_IQN, {1: image})
        except BaseException:
            self.tgtd.stop()
            raise
        assert self.tgtd.proc is not None
        self.pid = self.tgtd.proc.pid
        self.uri = self.tgtd.url(TGT_IQN, 1)
        self.cmd = ["tgtd", "-f", "--iscsi", f"portal=127.0.0.1:{self.tgtd.port}",
                    "-C", str(self.tgtd.control)]

    def stop(self) -> int:
        proc = self.tgtd.proc
        self.tgtd.stop()
        return proc.returncode if proc is not None else 0


class BlockyardServer:
    def __init__(self, image: Path, log: Path) -> None:
        python = os.environ.get("BLOCKYARD_PYTHON", sys.executable)
        self.cmd = [python, "-m", "blockyard", "serve", str(image), "--iscsi", "127.0.0.1:0",
                    "--log-level", "warning"]
        self.server: Server = start_server(
            "blockyard", self.cmd, log, ready_line=r"iscsi: listening on [0-9.]+:(?P<port>\d+)",
            uri=f"iscsi://127.0.0.1:{{port}}/iqn.2026-11.org.blockyard:{image.stem}/0")
        self.pid = self.server.proc.pid
        self.uri = self.server.uri

    def stop(self) -> int:
        return self.server.stop()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- clients -------------------------------------------------------------------------------
def build_loadgen(tmp: Path) -> Path:
    exe = tmp / "iscsi_loadgen"
    cmd = ["gcc", "-O2", "-Wall", "-o", str(exe), str(HERE / "iscsi_loadgen.c"), "-liscsi"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"cannot build the load generator (gcc, libiscsi-dev?):\n"
                         f"{' '.join(cmd)}\n{done.stderr}")
    return exe


def run_client(w: Workload, uri: str, args: argparse.Namespace, pid: int) -> Run:
    if w.tool == "loadgen":
        cmd = [str(args.loadgen), "-r", w.rw, "-p", w.pattern, "-b", str(w.bs),
               "-q", str(w.qd), "-t", str(args.runtime), "-R", str(args.ramp), uri]
    else:
        cmd = ["iscsi-perf", "-m", str(w.qd), "-b", str(w.bs // BLOCK), "-t", str(args.runtime),
               *(["-r"] if w.pattern == "rand" else []), uri]
    cpu0 = cpu_seconds(pid)
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=args.runtime + args.ramp + 60)
    cpu = cpu_seconds(pid) - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: rc {done.returncode}: {done.stderr.strip()[-300:]}")
    if w.tool == "loadgen":
        res = json.loads(done.stdout.strip().splitlines()[-1])
        if res["block_size"] != BLOCK:
            raise RuntimeError(f"block size {res['block_size']}, expected {BLOCK}")
        iops, lat, p99 = res["iops"], res["lat_mean_us"], res["lat_p99_us"]
        ios = res["ios"]
    else:  # iscsi-perf has no ramp: its whole run counts, connect excluded
        found = re.findall(r"iops average (\d+)", done.stdout)
        if not found:
            raise RuntimeError(f"no average in iscsi-perf's output: {done.stdout[-300:]!r}")
        iops, lat, p99 = float(found[-1]), None, None
        ios = iops * args.runtime
    return Run(iops * w.bs / MiB, iops, lat, p99, cpu * 1e6 / ios if ios else None)


# ---- rounds --------------------------------------------------------------------------------
def start(name: str, image: Path, tmp: Path, rnd: int) -> TgtdServer | BlockyardServer:
    if name == "tgtd":
        return TgtdServer(image, tmp / f"tgtd-{rnd}")
    return BlockyardServer(image, tmp / f"blockyard-{rnd}.log")


def bench_server(name: str, image: Path, args: argparse.Namespace, tmp: Path,
                 rnd: int) -> tuple[dict[str, Run | str], dict[str, Any]]:
    os.sync()  # the previous server's writes must not be flushed on this one's time
    warm_page_cache(image)
    (tmp / f"tgtd-{rnd}").mkdir(exist_ok=True)
    try:
        server = start(name, image, tmp, rnd)
    except (RuntimeError, OSError, TgtdError) as exc:
        return {w.name: f"not run: {exc}" for w in args.workloads}, {"error": str(exc)}
    out: dict[str, Run | str] = {}
    try:
        for w in args.workloads:
            progress(f"round {rnd}: {name}: {w.name} ...")
            os.sync()  # no writeback of the previous row's writes during this one
            try:
                out[w.name] = run_client(w, server.uri, args, server.pid)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                out[w.name] = f"failed: {exc}"
    finally:
        status = server.stop()
    return out, {"cmd": server.cmd, "uri": server.uri, "exit_status": status}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_rounds(args: argparse.Namespace, image: Path, tmp: Path) -> dict[str, Any]:
    runs: dict[str, dict[str, list[Run | str]]] = {s: {} for s in args.servers}
    infos: dict[str, Any] = {}
    loads = []
    for rnd in range(1, args.rounds + 1):
        order = args.servers if rnd % 2 else args.servers[::-1]
        loads.append(loadavg())
        for name in order:
            res, info = bench_server(name, image, args, tmp, rnd)
            infos[name] = info
            for wname, r in res.items():
                runs[name].setdefault(wname, []).append(r)
    loads.append(loadavg())
    return {"runs": runs, "infos": infos, "loadavg": loads}


def median(values: list[Run | str]) -> Run | None:
    ok = [v for v in values if isinstance(v, Run)]
    if not ok:
        return None

    def med(attr: str) -> float | None:
        xs = [getattr(v, attr) for v in ok if getattr(v, attr) is not None]
        return statistics.median(xs) if xs else None
    return Run(med("mib_s") or 0.0, med("iops") or 0.0, med("lat_mean_us"), med("lat_p99_us"),
               med("cpu_us_per_io"))


# ---- output --------------------------------------------------------------------------------
def table(data: dict[str, Any], args: argparse.Namespace) -> str:
    servers = args.servers
    headers = ["workload"]
    for s in servers:
        headers += [f"{s} MiB/s", f"{s} IOPS", f"{s} cpu us/IO"]
    both = set(SERVERS) <= set(servers)
    if both:
        headers += ["blockyard/tgtd", "per round"]
    rows, notes = [], []
    for w in args.workloads:
        row: list[Any] = [w.name]
        meds = {}
        for s in servers:
            values = data["runs"][s].get(w.name, [])
            meds[s] = m = median(values)
            row += [m.mib_s, m.iops, m.cpu_us_per_io] if m else [None, None, None]
            notes += [f"{s} {w.name}: {v}" for v in values if isinstance(v, str)]
        if both:
            by, tgt = meds["blockyard"], meds["tgtd"]
            row += [ratio(by.iops if by else None, tgt.iops if tgt else None),
                    round_ratios(data["runs"]["blockyard"].get(w.name, []),
                                 data["runs"]["tgtd"].get(w.name, []))]
        rows.append(row)
    return format_table(headers, rows) + "".join(f"\n  ! {n}" for n in notes)


def round_ratios(by: list[Run | str], tgt: list[Run | str]) -> str:
    """The spread of the ratio within rounds (each round's blockyard run against the
    tgtd run next to it): min-max."""
    ratios = [a.iops / b.iops for a, b in zip(by, tgt, strict=False)
              if isinstance(a, Run) and isinstance(b, Run) and b.iops]
    return f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"


def header(data: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"image: raw, {args.size_text} random data written {args.fill} B at a time, page"
             f" cache warm, sync before each row; {args.rounds} rounds"
             f" (server order alternating), {args.runtime}s per run"
             f" (+{args.ramp}s ramp for the loadgen); medians; cpus={os.cpu_count()}",
             f"  load average at each round start and at the end: {' | '.join(data['loadavg'])}",
             f"  clients: iscsi_loadgen (libiscsi {args.libiscsi}), iscsi-perf; one session,"
             " one connection per run"]
    for name, info in data["infos"].items():
        lines.append(f"  {name}: {' '.join(info.get('cmd', []))}"
                     f"{'; ERROR ' + info['error'] if 'error' in info else ''}")
    lines.append("  blockyard/tgtd = ratio of the median IOPS (same block size: also MiB/s), per"
                 " round = its range over the rounds; cpu us/IO = server CPU time (all threads)"
                 " per command")
    return "\n".join(lines)


def as_json(data: dict[str, Any], args: argparse.Namespace) -> str:
    out: dict[str, Any] = {"size": args.size, "runtime_s": args.runtime, "ramp_s": args.ramp,
                           "rounds": args.rounds, "loadavg": data["loadavg"],
                           "servers": data["infos"], "cpus": os.cpu_count(),
                           "workloads": [asdict(w) for w in args.workloads], "results": {}}
    for server, per in data["runs"].items():
        for wname, values in per.items():
            m = median(values)
            out["results"].setdefault(wname, {})[server] = {
                "median": asdict(m) if m else None,
                "rounds": [asdict(v) if isinstance(v, Run) else {"error": v} for v in values]}
    return json.dumps(out, indent=2)


# ---- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", type=int, default=10, help="seconds per run (default 10)")
    p.add_argument("--ramp", type=float, default=1.0, help="loadgen ramp seconds (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, servers alternating (3)")
    p.add_argument("--size", default="1G", help="size of the random raw file (default 1G)")
    p.add_argument("--only", default=",".join(SERVERS), help="servers, comma separated")
    p.add_argument("--workloads", default="", help="workload names, comma separated")
    p.add_argument("--no-iscsi-perf", action="store_true", help="skip the iscsi-perf rows")
    p.add_argument("--fill", default="4K",
                   help="write the file this many bytes at a time (default 4K; see write_image)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.only.split(",") if s.strip()]
    if bad := [s for s in args.servers if s not in SERVERS]:
        p.error(f"unknown server(s) {bad}; choose from {', '.join(SERVERS)}")
    wanted = {w.strip() for w in args.workloads.split(",") if w.strip()}
    args.workloads = tuple(w for w in WORKLOADS
                           if (not wanted or w.name in wanted or w.name.split()[0] in wanted)
                           and not (args.no_iscsi_perf and w.tool == "iscsi-perf"))
    args.size_text, args.size = args.size, parse_size(args.size)
    args.fill = parse_size(args.fill)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.libiscsi = tool_version(["dpkg-query", "-W", "-f", "${Version}\n", "libiscsi7"])
    started = time.monotonic()
    with work_dir("blockyard-iscsi-bench-") as tmp:
        args.loadgen = build_loadgen(tmp)
        progress(f"writing {args.size_text} of random data, {args.fill} bytes at a time ...")
        image = write_image(tmp / "disk.img", args.size, args.fill)
        data = run_rounds(args, image, tmp)
    progress(f"done in {time.monotonic() - started:.0f}s")
    if args.format == "json":
        print(as_json(data, args))
    else:
        print(header(data, args))
        print(format_note(args) + table(data, args))
    return 0


def format_note(args: argparse.Namespace) -> str:
    return "" if args.rounds > 1 else "(one round: no medians, expect a wide spread)\n"


if __name__ == "__main__":
    sys.exit(main())
