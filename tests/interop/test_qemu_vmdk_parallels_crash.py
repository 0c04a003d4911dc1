"""Crash tests: SIGKILL a writer in the middle of its work (image-formats.md §7).

A child Python process writes, zeroes and trims a dynamic VMDK or Parallels
image through our driver and flushes every ``EVERY`` operations, printing
``FLUSHED n`` after flush n completes.  We kill it (SIGKILL, by PID) a
moment after some flush, then demand:

* ``qemu-img check`` on the file as the kill left it: no corruption (the
  Parallels in-use mark and leaked space allowed; qemu ignores VMDK's
  uncleanShutdown byte);
* our ``open`` and ``check``: no errors except, for VMDK, a redundant grain
  table caught between its two writes; leaks are expected (unpublished
  allocations, trimmed space) -- ``check(repair=True)`` then ``compact()``
  leave ``check`` clean;
* every operation acknowledged before the last flush we saw is there: each
  byte equals the state at that flush or a value a later operation wrote;
* qemu and we read the same bytes; after a clean close ``qemu-img check`` is
  clean.

What SIGKILL cannot show: the page cache survives a killed process, so this
tests the file contents at any instant, not what a power cut would leave.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blockyard.block.formats import create_image, open_image

pytestmark = [pytest.mark.interop, pytest.mark.peers("qemu-img")]
MiB = 1 << 20
SIZE = 24 * MiB
EVERY = 20

WRITER = r"""
import asyncio, random, sys
from blockyard.block.formats import open_image

async def main(path: str, seed: str) -> None:
    img = open_image(path)
    for i, kind, off, n in ops(seed):
        if kind == "w":
            await img.pwrite(off, bytes([i % 251 + 1]) * n)
        elif kind == "z":
            await img.zero(off, n)
        else:
            await img.trim(off, n)
        if i % EVERY == 0:
            await img.flush()
            print(f"FLUSHED {i}", flush=True)

def ops(seed):
    rnd = random.Random(seed)
    i = 0
    while True:
        i += 1
        off = rnd.randrange(SIZE)
        n = min(rnd.randrange(1, 300000), SIZE - off)
        r = rnd.random()
        yield i, "w" if r < 0.8 else ("z" if r < 0.9 else "t"), off, n

if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def writer_source() -> str:
    return f"SIZE = {SIZE}\nEVERY = {EVERY}\n" + WRITER


def replay(seed: str, upto: int, later: int) -> tuple[bytearray, list[tuple[int, int, int]]]:
    """The image at flush ``upto`` and the (offset, length, byte) of later operations."""
    ns: dict[str, object] = {}
    exec(compile(writer_source().replace("if __name__", "if False and __name__"),  # noqa: S102
                 "writer", "exec"), ns)
    model = bytearray(SIZE)
    after = []
    for i, kind, off, n in ns["ops"](seed):  # type: ignore[operator]
        value = i % 251 + 1 if kind == "w" else 0
        if i <= upto:
            model[off:off + n] = bytes([value]) * n
        elif i <= upto + later:
            after.append((off, n, value))
        else:
            break
    return model, after


def assert_flushed_state(data: bytes, model: bytearray, after: list[tuple[int, int, int]]) -> None:
    """Each byte is the flushed state or something a later operation wrote there."""
    bounds = sorted({0, SIZE} | {o for o, _n, _v in after} | {o + n for o, n, _v in after})
    for a, b in zip(bounds, bounds[1:], strict=False):
        if data[a:b] == model[a:b]:
            continue
        values = {v for o, n, v in after if o <= a and b <= o + n}
        table = bytes(0 if x in values else 1 for x in range(256))
        for c in range(a, b, 512):
            got, want = data[c:min(b, c + 512)], bytes(model[c:min(b, c + 512)])
            if got == want or not any(got.translate(table)):
                continue
            bad = [c + k for k, (g, w) in enumerate(zip(got, want, strict=True))
                   if g != w and g not in values]
            assert not bad, (f"byte {bad[0]} holds {data[bad[0]]}: neither the flushed "
                             f"{model[bad[0]]} nor a later write {sorted(values)}")


def kill_after_flushes(path: Path, seed: str, flushes: int, delay: float) -> int:
    proc = subprocess.Popen([sys.executable, "-c", writer_source(), str(path), seed],
                            stdout=subprocess.PIPE, text=True)
    seen = 0
    try:
        assert proc.stdout is not None
        while seen < flushes * EVERY:
            line = proc.stdout.readline()
            assert line.startswith("FLUSHED"), f"writer died: {line!r}"
            seen = int(line.split()[1])
        time.sleep(delay)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        # read() drains what readline() already buffered, then the pipe up to EOF;
        # communicate(timeout=...) would bypass that buffer and lose lines.
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.wait(timeout=30)
    for line in out.splitlines():  # flushes that finished before the kill landed
        if line.startswith("FLUSHED"):
            seen = int(line.split()[1])
    return seen


def qemu_check(fmt: str, path: Path, *, crashed: bool) -> None:
    r = subprocess.run(["qemu-img", "check", "-f", fmt, str(path)], capture_output=True,
                       text=True, timeout=60)
    errors = [x for x in (r.stdout + r.stderr).splitlines() if x.startswith("ERROR")]
    allowed = ("ERROR image was not closed correctly", "ERROR space leaked at the end")
    if crashed:
        assert all(x.startswith(allowed) for x in errors), r.stdout + r.stderr
        assert r.returncode in (0, 2, 3), r.stdout + r.stderr
    else:
        assert r.returncode == 0 and not errors, r.stdout + r.stderr


async def crash_once(tmp_path: Path, fmt: str, seed: str) -> None:
    p = tmp_path / ("c.vmdk" if fmt == "vmdk" else "c.hds")
    opts = {"cluster_size": 64 << 10} if fmt == "parallels" else {}
    img = create_image(p, SIZE, fmt, **opts)
    await img.close()
    rnd = random.Random(seed)
    flushed = kill_after_flushes(p, seed, rnd.randint(2, 4), rnd.uniform(0, 0.05))
    qemu_check(fmt, p, crashed=True)
    img = open_image(p)
    report = img.check()
    tolerated = [e for e in report.errors if "redundant grain table" in e]
    assert report.errors == tolerated, report.errors
    img.check(repair=True)
    data = bytes(await img.pread(0, SIZE))
    await img.compact()
    assert img.check().clean
    assert bytes(await img.pread(0, SIZE)) == data
    model, after = replay(seed, flushed, 2 * EVERY - 1)
    try:
        assert_flushed_state(data, model, after)
    except AssertionError as exc:
        raise AssertionError(f"seed {seed!r}, last flush seen {flushed}: {exc}") from None
    await img.close()
    raw = tmp_path / "q.raw"
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(p), str(raw)], check=True)
    assert raw.read_bytes() == data
    qemu_check(fmt, p, crashed=False)
    img = open_image(p, read_only=True)
    assert not img.info().dirty
    await img.close()


@pytest.mark.parametrize("fmt", ["vmdk", "parallels"])
@pytest.mark.parametrize("seed", ["a", "b"])
async def test_sigkill_mid_write(tmp_path: Path, fmt: str, seed: str) -> None:
    await crash_once(tmp_path, fmt, f"{fmt}-{seed}")


@pytest.mark.soak
@pytest.mark.parametrize("fmt", ["vmdk", "parallels"])
async def test_sigkill_mid_write_soak(tmp_path: Path, fmt: str) -> None:
    for i in range(40):
        d = tmp_path / str(i)
        d.mkdir()
        await crash_once(d, fmt, f"{fmt}-soak-{i}")
        await asyncio.sleep(0)
