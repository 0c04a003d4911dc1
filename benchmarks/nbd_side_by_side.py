#!/usr/bin/env python3
"""blockyard vs nbdkit vs qemu-nbd over the same image, measured with fio's nbd engine.

Each server in turn (never two at once) serves one image on 127.0.0.1; before
each, dirty pages are synced and the image is read once so that every server
starts with a warm page cache.  fio's nbd engine (one job = one connection)
runs every workload for ``--runtime`` seconds after a ``--ramp`` second ramp.
See benchmarks/README.md for the meaning of each row.

    python benchmarks/nbd_side_by_side.py                 # 1 GiB, 10 s per run
    python benchmarks/nbd_side_by_side.py --runtime 5 --only blockyard,nbdkit
    python benchmarks/nbd_side_by_side.py --format json > result.json
    python benchmarks/nbd_side_by_side.py --image disk.vdi   # blockyard vs qemu-nbd
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Fio,
    Server,
    format_table,
    free_port,
    parse_size,
    random_file,
    ratio,
    run_fio,
    start_server,
    tool_version,
    warm_page_cache,
    work_dir,
)

SERVERS = ("blockyard", "nbdkit", "qemu-nbd")
QEMU_FORMATS = {"raw": "raw", "vdi": "vdi", "vhd": "vpc", "vmdk": "vmdk", "hdd": "parallels"}
NBDKIT_THREADS = 16  # nbdkit's own default, passed explicitly so the output can say it


@dataclass(frozen=True)
class Workload:
    name: str
    rw: str
    bs: str
    iodepth: int


WORKLOADS = (
    Workload("seq-read-1M-qd8", "read", "1M", 8),
    Workload("seq-write-1M-qd8", "write", "1M", 8),
    Workload("rand-read-4k-qd1", "randread", "4k", 1),
    Workload("rand-read-4k-qd32", "randread", "4k", 32),
    Workload("rand-write-4k-qd32", "randwrite", "4k", 32),
)


# ---- servers -----------------------------------------------------------------------------
def start_blockyard(image: Path, fmt: str, log: Path, cpus: set[int] | None) -> Server:
    python = os.environ.get("BLOCKYARD_PYTHON", sys.executable)
    cmd = [python, "-m", "blockyard", "serve", str(image), "--nbd", "127.0.0.1:0",
           "--log-level", "warning"]
    server = start_server("blockyard", cmd, log, cpus=cpus,
                          ready_line=r"nbd: listening on [0-9.]+:(?P<port>\d+)",
                          uri=f"nbd://127.0.0.1:{{port}}/{image.stem}")
    server.info["notes"] = "format probed, defaults (uvloop if installed)"
    return server


def start_nbdkit(image: Path, fmt: str, log: Path, cpus: set[int] | None) -> Server:
    if fmt != "raw":
        raise RuntimeError(f"nbdkit's file plugin serves raw files only, not {fmt}")
    port = free_port()
    cmd = ["nbdkit", "--exit-with-parent", "-f", "-i", "127.0.0.1", "-p", str(port),
           "-t", str(NBDKIT_THREADS), "file", str(image)]
    server = start_server("nbdkit", cmd, log, port=port, cpus=cpus,
                          uri=f"nbd://127.0.0.1:{port}/")
    server.info["notes"] = f"file plugin, {NBDKIT_THREADS} threads (its default)"
    return server


def start_qemu_nbd(image: Path, fmt: str, log: Path, cpus: set[int] | None) -> Server:
    port = free_port()
    cmd = ["qemu-nbd", "-f", QEMU_FORMATS[fmt], "-x", "bench", "-b", "127.0.0.1",
           "-p", str(port), "--persistent", "--shared=8", str(image)]
    server = start_server("qemu-nbd", cmd, log, port=port, cpus=cpus,
                          uri=f"nbd://127.0.0.1:{port}/bench")
    server.info["notes"] = "defaults: cache=writeback, aio=threads, -e 8, no multi-conn"
    return server


STARTERS = {"blockyard": start_blockyard, "nbdkit": start_nbdkit, "qemu-nbd": start_qemu_nbd}
VERSIONS = {"blockyard": [sys.executable, "-c", "import blockyard; print('blockyard',"
                          " getattr(blockyard, '__version__', '?'))"],
            "nbdkit": ["nbdkit", "--version"], "qemu-nbd": ["qemu-nbd", "--version"]}


# ---- runs ----------------------------------------------------------------------------------
def fio_options(w: Workload, uri: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"name": w.name, "ioengine": "nbd", "uri": uri, "rw": w.rw, "bs": w.bs,
            "iodepth": w.iodepth, "numjobs": 1, "time_based": None,
            "runtime": f"{args.runtime}s", "ramp_time": f"{args.ramp}s",
            "norandommap": None, "randrepeat": 0}


def bench_server(name: str, image: Path, fmt: str, args: argparse.Namespace,
                 logs: Path) -> tuple[dict[str, Fio | str], dict[str, Any]]:
    os.sync()  # the previous server's writes must not be flushed on this one's time
    warm_page_cache(image)
    server_cpus, fio_cpus = ({0}, {1}) if args.pin else (None, None)
    results: dict[str, Fio | str] = {}
    try:
        server = STARTERS[name](image, fmt, logs / f"{name}.log", server_cpus)
    except (RuntimeError, OSError) as exc:
        return {w.name: f"not run: {exc}" for w in args.workloads}, {"error": str(exc)}
    try:
        for w in args.workloads:
            progress(f"{name}: {w.name} ...")
            try:
                results[w.name] = run_fio(fio_options(w, server.uri, args), cpus=fio_cpus,
                                          timeout=args.runtime + args.ramp + 60, cwd=logs)
            except RuntimeError as exc:
                results[w.name] = f"failed: {exc}"
    finally:
        status = server.stop()
    info = dict(server.info, uri=server.uri, exit_status=status)
    return results, info


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_image(args: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """The random raw image, or the ``--image`` given, and its format."""
    if args.image is None:
        progress(f"writing {args.size} bytes of random data ...")
        image = random_file(tmp / "bench.img", args.size)
        args.size_text = f"{args.size / (1 << 20):.0f} MiB random data"
        return image, "raw"
    fmt = args.image_format or args.image.suffix.lstrip(".").lower() or "raw"
    if fmt not in QEMU_FORMATS:
        raise SystemExit(f"unknown image format {fmt!r}; use --image-format")
    args.size_text = f"{args.image.stat().st_size / (1 << 20):.0f} MiB file"
    info = run_json(["qemu-img", "info", "--output=json", "-f", QEMU_FORMATS[fmt],
                     str(args.image)])
    if info:
        args.size_text += f", {info['virtual-size'] / (1 << 20):.0f} MiB virtual"
    return args.image, fmt


def server_image(args: argparse.Namespace, image: Path, fmt: str, name: str, tmp: Path) -> Path:
    """The shared random raw file, or a fresh copy of ``--image`` for each server
    (the write workloads change it and allocate blocks in sparse formats)."""
    if args.image is None:
        return image
    copy = tmp / f"{name}.{fmt}"
    shutil.copyfile(image, copy)
    return copy


def run_json(cmd: list[str]) -> dict[str, Any] | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return json.loads(res.stdout) if res.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


# ---- output --------------------------------------------------------------------------------
def table(results: dict[str, dict[str, Fio | str]], servers: list[str], fmt: str,
          workloads: tuple[Workload, ...]) -> str:
    headers = ["workload"]
    for s in servers:
        headers += [f"{s} MiB/s", f"{s} IOPS"]
    others = [s for s in servers if s != "blockyard"] if "blockyard" in servers else []
    headers += [f"by/{s}" for s in others]
    rows, notes = [], []
    for w in workloads:
        label = w.name if fmt == "raw" else f"{w.name} [{fmt}]"
        row: list[Any] = [label]
        for s in servers:
            r = results[s][w.name]
            row += [r.mib_s, r.iops] if isinstance(r, Fio) else [None, None]
            if not isinstance(r, Fio):
                notes.append(f"{s} {w.name}: {r}")
        by = results.get("blockyard", {}).get(w.name)
        row += [ratio(_iops(by), _iops(results[s][w.name])) for s in others]
        rows.append(row)
    return format_table(headers, rows) + "".join(f"\n  ! {n}" for n in notes)


def _iops(r: Fio | str | None) -> float | None:
    return r.iops if isinstance(r, Fio) else None


def header(args: argparse.Namespace, fmt: str, infos: dict[str, Any]) -> str:
    pin = ", server on cpu0, fio on cpu1" if args.pin else ""
    lines = [f"image: {fmt}, {args.size_text}, page cache warm; {tool_version(['fio', '-v'])}"
             f" nbd engine, 1 job (1 connection) per run, {args.runtime}s + {args.ramp}s ramp,"
             f" norandommap; cpus={os.cpu_count()}{pin}"]
    for name, info in infos.items():
        lines.append(f"  {name}: {info.get('version', '?')}; {info.get('notes', '')}"
                     f"{'; ERROR ' + info['error'] if 'error' in info else ''}")
    lines.append("  by/X = blockyard IOPS / X IOPS (same block size, so also the MiB/s ratio)")
    return "\n".join(lines)


def as_json(results: dict[str, dict[str, Fio | str]], infos: dict[str, Any],
            args: argparse.Namespace, fmt: str) -> str:
    out: dict[str, Any] = {"image_format": fmt, "size": args.size, "runtime_s": args.runtime,
                           "ramp_s": args.ramp, "pinned": args.pin, "servers": infos,
                           "workloads": [asdict(w) for w in args.workloads], "results": {}}
    for server, per in results.items():
        for wname, r in per.items():
            cell = asdict(r) if isinstance(r, Fio) else {"error": r}
            out["results"].setdefault(wname, {})[server] = cell
    return json.dumps(out, indent=2)


# ---- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", type=int, default=10, help="seconds per run (default 10)")
    p.add_argument("--ramp", type=int, default=1, help="fio ramp_time seconds (default 1)")
    p.add_argument("--size", default="1G", help="size of the random raw image (default 1G)")
    p.add_argument("--only", default=",".join(SERVERS), help="servers, comma separated")
    p.add_argument("--workloads", default="", help="workload names, comma separated")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--image", type=Path, help="serve (a copy of) this image instead")
    p.add_argument("--image-format", choices=sorted(QEMU_FORMATS),
                   help="format of --image (default: its extension)")
    p.add_argument("--pin", action="store_true", help="server on cpu 0, fio on cpu 1")
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.only.split(",") if s.strip()]
    if bad := [s for s in args.servers if s not in SERVERS]:
        p.error(f"unknown server(s) {bad}; choose from {', '.join(SERVERS)}")
    wanted = {w.strip() for w in args.workloads.split(",") if w.strip()}
    args.workloads = tuple(w for w in WORKLOADS if not wanted or w.name in wanted)
    args.size_text, args.size = args.size, parse_size(args.size)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with work_dir() as tmp:
        image, fmt = prepare_image(args, tmp)
        servers = [s for s in args.servers if fmt == "raw" or s != "nbdkit"]
        results, infos = {}, {}
        for name in servers:
            served = server_image(args, image, fmt, name, tmp)
            results[name], infos[name] = bench_server(name, served, fmt, args, tmp)
            infos[name]["version"] = tool_version(VERSIONS[name])
    if args.format == "json":
        print(as_json(results, infos, args, fmt))
    else:
        print(header(args, fmt, infos))
        print(table(results, servers, fmt, args.workloads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
