"""Host cache off, crash safety: a subprocess writes through DirectFile, FLUSHes, keeps
writing (cached, timer write-outs, FUA) and is SIGKILLed by its PID; on reopening, every
byte acknowledged before the FLUSH, and every FUA write acknowledged before the kill, is
there."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = 8 << 20
HALF = SIZE // 2

# Runs in the child and in the test (to rebuild the expected contents).
PATTERN = r'''
import random

def phase1(seed):
    """(offset, data) writes to the first half: unaligned, aligned, small and large."""
    rng = random.Random(seed)
    out = []
    for i in range(300):
        n = rng.choice([1, 100, 512, 4096, 5000, 65536, 300000, 3 << 20])
        off = rng.randrange(0, (4 << 20) - n)
        out.append((off, rng.randbytes(n)))
    return out
'''

CHILD = PATTERN + r'''
import asyncio, os, sys
from blockyard.block.hostcache_direct import DirectFile

async def main(path, seed, delay):
    layer = DirectFile(path, cache_limit=1 << 20, writeout_delay=delay)
    for off, data in phase1(seed):
        await layer.pwrite(off, data)
    await layer.flush()
    print("FLUSHED", flush=True)
    rng = random.Random(seed + 1)
    i = 0
    while True:  # FUA writes to 4-6 MiB (4 KiB slots), cached writes to 6-8 MiB
        if i % 3 == 0:
            off = (4 << 20) + (i // 3 % 512) * 4096
            await layer.pwrite(off, (b"%08d" % i) * 512, fua=True)
            print(f"FUA {off} {i}", flush=True)
        else:
            off = (6 << 20) + rng.randrange(0, (2 << 20) - 70000)
            await layer.pwrite(off, rng.randbytes(rng.choice([300, 4096, 70000])))
        i += 1
        if i == 1600:
            print("BUSY", flush=True)
        await asyncio.sleep(0)

asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
'''


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="blockyard-crash-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def expected_first_half(seed: int, initial: bytes) -> bytes:
    scope: dict[str, object] = {}
    exec(PATTERN, scope)  # noqa: S102 - our own constant
    model = bytearray(initial[:HALF])
    for off, data in scope["phase1"](seed):  # type: ignore[operator]
        model[off:off + len(data)] = data
    return bytes(model)


def read_lines_until(proc: subprocess.Popen[bytes], word: bytes, lines: list[bytes]) -> None:
    assert proc.stdout is not None
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, f"child never printed {word!r}"
        line = proc.stdout.readline()
        assert line, f"child exited before {word!r}: {proc.stderr.read() if proc.stderr else ''}"
        lines.append(line)
        if line.startswith(word):
            return


@pytest.mark.parametrize("seed,delay,busy", [
    (1, 3600.0, False),  # killed right after the flush: only the flush wrote the cache out
    (2, 3600.0, True),   # killed amid FUA and cached writes (back-pressure write-outs)
    (3, 0.05, True),     # the same with a busy write-out timer
])
def test_sigkill_after_flush_loses_nothing_acknowledged(disk_dir: Path, seed: int,
                                                         delay: float, busy: bool) -> None:
    path = disk_dir / "disk.raw"
    initial = os.urandom(SIZE)
    path.write_bytes(initial)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(seed), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[bytes] = []
    try:
        read_lines_until(proc, b"FLUSHED", lines)
        if busy:
            read_lines_until(proc, b"BUSY", lines)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    disk = path.read_bytes()
    assert len(disk) == SIZE
    assert disk[:HALF] == expected_first_half(seed, initial), "flushed data was lost"
    acked: dict[int, int] = {}  # slot offset -> the last FUA write acknowledged there
    for line in lines:
        if line.startswith(b"FUA"):
            _, off, i = line.split()
            acked[int(off)] = int(i)
    assert len(acked) == 512 or not busy
    for off, i in acked.items():
        slot = disk[off:off + 4096]
        number = int(slot[:8])  # a later write, in flight at the kill, may have landed
        assert slot == slot[:8] * 512 and number >= i, f"FUA write {i} at {off} was lost"
