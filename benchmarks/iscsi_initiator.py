"""Clone a remote iSCSI LUN to a local raw file: blockyard's initiator vs qemu-img.

    .venv/bin/python benchmarks/iscsi_initiator.py                 # 1 GiB, 3 runs each
    .venv/bin/python benchmarks/iscsi_initiator.py --size 256M --runs 1
    .venv/bin/python benchmarks/iscsi_initiator.py --depth 16 --chunk 4M --format json

What it does:

1. writes a raw file of ``--size`` bytes (random data; every fourth 4 MiB
   piece zero, ``--zero-every``, so both copies have zeros to skip) under /var/tmp
   (``$BLOCKYARD_BENCH_DIR``), and serves it as LUN 1 of a private Debian
   ``tgtd`` on 127.0.0.1 (its own control socket number and port, stopped by
   PID; ``tests/interop/tgtd_helpers.py``);
2. for each run, alternating the order: reads the source file once (warm page
   cache for tgtd), removes the destination, then copies the LUN to a local
   raw file with
   * qemu-img: ``qemu-img convert -O raw iscsi://127.0.0.1:PORT/IQN/1 DST``
     (its defaults: 8 coroutines, zero detection, no fsync of the output --
     checked with strace: qemu-img 7.2 never fsyncs here);
   * blockyard: the command an operator runs, ``blockyard medium clone URL
     DST --format raw --no-register`` (``media.clone.copy_visible``: 8 x 1 MiB
     reads in flight, written in order, every all-zero 64 KiB left as a hole,
     then one fdatasync -- the copy is durable before it can be registered,
     which qemu-img does not do: about 0.5 s per GiB here; start-up and login
     count as for qemu-img);
   * blockyard-loop: the bare copy loop of this script (``open_remote`` and
     ``--depth`` READ(16) requests of ``--chunk`` bytes through the RemoteLun
     straight into ``os.pwrite``): what the initiator alone can do;
3. checks both copies against the source byte for byte, and prints the best
   and the median run of each: seconds, MiB/s, and the blockyard / qemu-img
   copy rate (on a busy two-core machine the median is the fairer figure).

Needs ``tgtd``/``tgtadm`` (Debian ``tgt``) and ``qemu-img`` with its libiscsi
driver (Debian ``qemu-utils``... ``qemu-block-extra`` on some releases).
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "interop"))

from common import MiB, format_table, parse_size, ratio, tool_version, work_dir  # noqa: E402

IQN = "iqn.2026-11.org.blockyard.bench:clone"
SPARSE_BLOCK = 64 << 10


# ---- our clone (runs in a subprocess: ``--clone URL DST``) -------------------------------
ZERO_BLOCK = bytes(SPARSE_BLOCK)


def _zero(buf: bytearray, start: int, end: int) -> bool:
    # bytearray.startswith is a memcmp in place; ``memoryview == bytes`` compares
    # element by element (about 1 ms per MiB of zeros: it would dominate the copy).
    if end - start == SPARSE_BLOCK:
        return buf.startswith(ZERO_BLOCK, start)
    return buf.count(0, start, end) == end - start


def write_sparse(fd: int, buf: bytearray, n: int, offset: int) -> int:
    """Write ``buf[:n]`` at ``offset`` leaving all-zero 64 KiB blocks as holes; bytes written."""
    view = memoryview(buf)
    written, start = 0, None
    for pos in range(0, n, SPARSE_BLOCK):
        end = min(pos + SPARSE_BLOCK, n)
        if _zero(buf, pos, end):
            if start is not None:
                written += os.pwrite(fd, view[start:pos], offset + start)
                start = None
        elif start is None:
            start = pos
    if start is not None:
        written += os.pwrite(fd, view[start:n], offset + start)
    return written


async def clone(url: str, dst: str, depth: int, chunk: int,
                writer_thread: bool = False) -> dict[str, Any]:
    from blockyard.transport.iscsi_initiator import open_remote

    lun = await open_remote(url, read_only=True)
    size = lun.size
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # O_TRUNC: ext4 flushes
    os.ftruncate(fd, size)
    cursor = [0, 0]  # next offset, bytes written
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        buf = bytearray(chunk)  # one buffer per request slot, reused
        view = memoryview(buf)
        while cursor[0] < size:
            off = cursor[0]
            cursor[0] += chunk
            n = min(chunk, size - off)
            await lun.readinto(off, view[:n])
            if writer_thread:
                wrote = await loop.run_in_executor(None, write_sparse, fd, buf, n, off)
                cursor[1] += wrote
            else:
                cursor[1] += write_sparse(fd, buf, n, off)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker() for _ in range(depth)))
    finally:
        os.close(fd)
        copied = time.perf_counter() - started
        await lun.close()
    return {"size": size, "written": cursor[1], "copy_seconds": copied}


def clone_main(url: str, dst: str, depth: int, chunk: int, writer_thread: bool) -> None:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(clone(url, dst, depth, chunk, writer_thread))))


# ---- the comparison ------------------------------------------------------------------------
def make_source(path: Path, size: int, zero_every: int) -> None:
    piece = 4 * MiB
    with open(path, "wb") as f:
        for i, pos in enumerate(range(0, size, piece)):
            n = min(piece, size - pos)
            zero = zero_every and i % zero_every == zero_every - 1
            f.write(bytes(n) if zero else os.urandom(n))


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return elapsed, res.stdout


def run(args: argparse.Namespace) -> dict[str, Any]:
    from common import warm_page_cache
    from tgtd_helpers import Tgtd

    with work_dir("blockyard-iscsi-bench-") as tmp:
        src, dst = tmp / "source.raw", tmp / "copy.raw"
        print(f"writing {args.size >> 20} MiB source ...", file=sys.stderr)
        make_source(src, args.size, args.zero_every)
        tools = {
            "qemu-img": lambda url: ["qemu-img", "convert", "-O", "raw", url, str(dst)],
            "blockyard": lambda url: [sys.executable, "-m", "blockyard", "medium", "clone",
                                      url, str(dst), "--format", "raw", "--no-register"],
            "blockyard-loop": lambda url: [sys.executable, __file__, "--clone", url, str(dst),
                                           "--depth", str(args.depth), "--chunk",
                                           str(args.chunk)]
            + (["--writer-thread"] if args.writer_thread else []),
        }
        os.environ["BLOCKYARD_STATE_DIR"] = str(tmp / "state")  # the CLI's registry: ours
        times: dict[str, list[float]] = {name: [] for name in tools}
        copy: list[float] = []  # blockyard from login to last write, without start-up
        with Tgtd(tmp) as tgtd:
            tgtd.add_target(1, IQN, {1: src})
            url = tgtd.url(IQN, 1)
            for r in range(args.runs):
                order = list(tools)[r % len(tools):] + list(tools)[:r % len(tools)]
                for name in order:
                    warm_page_cache(src)
                    dst.unlink(missing_ok=True)
                    seconds, out = timed(tools[name](url))
                    if not filecmp.cmp(src, dst, shallow=False):
                        raise RuntimeError(f"{name}: the copy differs from the source")
                    times[name].append(seconds)
                    if name == "blockyard-loop":
                        copy.append(json.loads(out)["copy_seconds"])
                    print(f"run {r + 1} {name}: {seconds:.2f} s", file=sys.stderr)
    return {"size": args.size, "depth": args.depth, "chunk": args.chunk, "times": times,
            "zero_every": args.zero_every,
            "blockyard_copy_phase": copy,
            "qemu_img": tool_version(["qemu-img", "--version"]),
            "tgtd": tool_version(["tgtd", "--version"])}


def report(result: dict[str, Any]) -> str:
    size = result["size"]
    best = {name: min(ts) for name, ts in result["times"].items()}
    median = {name: statistics.median(ts) for name, ts in result["times"].items()}
    rows = [[name, f"{best[name]:.2f}", size / MiB / best[name], f"{median[name]:.2f}",
             size / MiB / median[name], " ".join(f"{t:.2f}" for t in result["times"][name])]
            for name in best]
    table = format_table(["tool", "best s", "MiB/s", "median s", "MiB/s", "all runs (s)"],
                         rows)
    rate = f"{ratio(median['qemu-img'], median['blockyard'])} (median), " \
           f"{ratio(best['qemu-img'], best['blockyard'])} (best)"
    phase = min(result["blockyard_copy_phase"])
    return (f"clone of a {size >> 20} MiB tgtd LUN to a local raw file "
            f"(blockyard-loop: depth {result['depth']} x {result['chunk'] >> 20} MiB)\n"
            f"{table}\n"
            f"blockyard (medium clone) / qemu-img copy rate: {rate}  ({result['qemu_img']})\n"
            f"blockyard-loop without interpreter start-up (open_remote to the last write): "
            f"{phase:.2f} s, {size / MiB / phase:,.0f} MiB/s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=parse_size("1G"))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--depth", type=int, default=8, help="requests in flight (blockyard)")
    p.add_argument("--chunk", type=parse_size, default=parse_size("1M"),
                   help="bytes per request (blockyard)")
    p.add_argument("--zero-every", type=int, default=4,
                   help="every Nth 4 MiB piece of the source is zero (0: none)")
    p.add_argument("--writer-thread", action="store_true",
                   help="write the copy from a thread (blockyard)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--clone", nargs=2, metavar=("URL", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.clone:
        clone_main(args.clone[0], args.clone[1], args.depth, args.chunk, args.writer_thread)
        return 0
    result = run(args)
    print(json.dumps(result, indent=2) if args.format == "json" else report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
