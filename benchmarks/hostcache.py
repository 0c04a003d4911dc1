#!/usr/bin/env python3
"""Host cache on vs off, side by side, measured with fio's nbd engine.

The server runs in this process (until ``blockyard serve --host-cache`` exists):
NbdServer on 127.0.0.1 port 0 exporting ``open_raw(image, host_cache=...)``.
Before every run the image is written back and dropped from the page cache
(fdatasync + POSIX_FADV_DONTNEED), so "on" starts cold each time and gains
only what the page cache gives it during the run; "off" never uses it.

    python benchmarks/hostcache.py                  # 512 MiB image, 5 s per run
    python benchmarks/hostcache.py --runtime 10 --size 1024
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bandwidth_groups import InProcessNbd  # noqa: E402
from common import MiB, format_table, random_file, run_fio, tool_version, work_dir  # noqa: E402

from blockyard.block.hostcache import open_raw  # noqa: E402
from blockyard.transport.nbd_server import Export  # noqa: E402

WORKLOADS = (  # name, rw, bs, iodepth
    ("seq-read-1M-qd8", "read", "1M", 8),
    ("seq-write-1M-qd8", "write", "1M", 8),
    ("rand-read-4k-qd32", "randread", "4k", 32),
)


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_mode(image: Path, host_cache: bool, args: argparse.Namespace,
               logs: Path) -> dict[str, Any]:
    layers: list[Any] = []

    def exports() -> list[Export]:
        layer = open_raw(image, host_cache=host_cache)
        layers.append(layer)
        return [Export("disk", layer)]

    results: dict[str, Any] = {}
    with InProcessNbd(exports) as server:
        kind = type(layers[0]).__name__
        for name, rw, bs, depth in WORKLOADS:
            evict(image)
            print(f"host cache {'on' if host_cache else 'off'} ({kind}): {name} ...",
                  file=sys.stderr, flush=True)
            results[name] = run_fio({
                "name": name, "ioengine": "nbd", "uri": server.uri("disk"), "rw": rw,
                "bs": bs, "iodepth": depth, "numjobs": 1, "time_based": None,
                "runtime": f"{args.runtime}s", "ramp_time": "1s", "norandommap": None,
                "randrepeat": 0}, timeout=args.runtime + 60, cwd=logs)
    results["layer"] = kind
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", type=int, default=5, help="seconds per fio run")
    p.add_argument("--size", type=int, default=512, help="image size in MiB")
    args = p.parse_args()
    with work_dir("blockyard-hostcache-") as d:
        image = random_file(d / "disk.raw", args.size * MiB)
        on = bench_mode(image, True, args, d)
        off = bench_mode(image, False, args, d)
    print(f"image {args.size} MiB in {d.parent} (page cache dropped before each run), "
          f"{args.runtime} s per run after 1 s ramp; {tool_version(['fio', '-v'])}; "
          f"on = {on['layer']}, off = {off['layer']}")
    rows = []
    for name, *_ in WORKLOADS:
        a, b = on[name], off[name]
        rows.append([name, f"{a.mib_s:.1f}", f"{b.mib_s:.1f}", f"{a.iops:.0f}", f"{b.iops:.0f}",
                     f"{a.lat_p99_us:.0f}", f"{b.lat_p99_us:.0f}"])
    print(format_table(["workload", "on MiB/s", "off MiB/s", "on IOPS", "off IOPS",
                        "on p99 us", "off p99 us"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
