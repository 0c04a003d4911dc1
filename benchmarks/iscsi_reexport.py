"""A remote LUN re-exported over NBD by blockyard's initiator, against the LUN itself.

tgtd (Debian tgt) serves a raw file as an iSCSI LUN.  The same workloads run
twice: directly on the LUN with libiscsi (the load generator of
iscsi_side_by_side.py), and through ``blockyard serve iscsi://... --nbd`` with
fio's nbd engine, so the table shows what the gateway costs.  Reads and
writes; medians of ``--rounds`` alternating rounds.

    python benchmarks/iscsi_reexport.py --runtime 5 --rounds 2 --size 512M
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import format_table, parse_size, run_fio, start_server  # noqa: E402
from iscsi_side_by_side import (  # noqa: E402
    WORKLOADS,
    TgtdServer,
    build_loadgen,
    cpu_seconds,
    run_client,
    write_image,
)

ROWS = ("seq-read-1M-qd8", "seq-write-1M-qd8", "rand-read-4k-qd32", "rand-write-4k-qd32")


def _fio(uri: str, w, args: argparse.Namespace, cwd: Path,  # type: ignore[no-untyped-def]
         pid: int) -> tuple[float, float]:
    """MiB/s through the gateway, and the gateway's CPU microseconds per command."""
    rw = ("rand" if w.pattern == "rand" else "") + w.rw
    job = {"name": w.name, "ioengine": "nbd", "uri": uri, "rw": rw, "bs": w.bs,
           "iodepth": w.qd, "runtime": args.runtime, "time_based": None, "ramp_time": 1,
           "size": args.size, "norandommap": None}
    cpu0 = cpu_seconds(pid)
    res = run_fio(job, cwd=cwd)
    cpu = cpu_seconds(pid) - cpu0  # the ramp's commands too, so per command is approximate
    ios = res.iops * (args.runtime + 1)
    return res.mib_s, cpu * 1e6 / ios if ios else 0.0


Row = tuple[float, float, float]  # direct MiB/s, re-exported MiB/s, gateway us per command


def one_round(image: Path, tmp: Path, args: argparse.Namespace, rnd: int) -> dict[str, Row]:
    tgt = TgtdServer(image, tmp / "tgtd")
    out: dict[str, Row] = {}
    try:
        gw = start_server("blockyard", [sys.executable, "-m", "blockyard", "serve", tgt.uri,
                                        "--nbd", "127.0.0.1:0", "--log-level", "warning"],
                          tmp / "gw.log", ready_line=r"nbd: listening on [0-9.]+:(?P<port>\d+)",
                          uri="nbd://127.0.0.1:{port}/tgtd")
        try:
            for w in WORKLOADS:
                if w.name not in ROWS or w.tool != "loadgen":
                    continue
                gateway_first = rnd % 2 == 1  # alternate which side runs first
                if gateway_first:
                    via, cpu = _fio(gw.uri, w, args, tmp, gw.proc.pid)
                direct = run_client(w, tgt.uri, args, tgt.pid).mib_s
                if not gateway_first:
                    via, cpu = _fio(gw.uri, w, args, tmp, gw.proc.pid)
                out[w.name] = (direct, via, cpu)
        finally:
            gw.stop()
    finally:
        tgt.stop()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--size", default="512M")
    args = p.parse_args()
    args.ramp = 1
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="blockyard-reexport-") as d:
        tmp = Path(d)
        (tmp / "tgtd").mkdir()
        image = write_image(tmp / "disk.img", parse_size(args.size), 4096)
        args.loadgen = build_loadgen(tmp)
        rounds = [one_round(image, tmp, args, rnd) for rnd in range(args.rounds)]
    rows = []
    for name in ROWS:
        direct = statistics.median(r[name][0] for r in rounds)
        via = statistics.median(r[name][1] for r in rounds)
        cpu = statistics.median(r[name][2] for r in rounds)
        ratios = [r[name][1] / r[name][0] for r in rounds]
        rows.append((name, f"{direct:,.0f}", f"{via:,.0f}", f"{via / direct:.2f}",
                     f"{min(ratios):.2f}-{max(ratios):.2f}", f"{cpu:,.0f}"))
    print(f"tgtd LUN over loopback, {args.size}, {args.rounds} rounds x {args.runtime} s, "
          "MiB/s medians")
    print(format_table(("workload", "LUN direct (libiscsi)", "re-exported (fio nbd)",
                        "re-export/direct", "per round", "gw us/cmd"), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
