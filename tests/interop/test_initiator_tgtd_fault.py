"""Fault test: tgtd drops our connection (``tgtadm --op delete --mode conn``) in the
middle of a sustained write run through the RemoteLun, twice.  Every write is
acknowledged, the backing file holds exactly the last data written to every block,
and the log shows the drops and the reconnects (session reinstated, same ISID)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tgtd_helpers import Tgtd, fill

from blockyard.transport.iscsi_initiator import open_remote

pytestmark = pytest.mark.interop
IQN = "iqn.2026-11.org.blockyard.test:fault"
MiB = 1 << 20
SIZE = 32 * MiB
CHUNK = 256 << 10


@pytest.fixture
def tgtd(tmp_path: Path, require_tool: Callable[[str], str]) -> Iterator[Tgtd]:
    require_tool("tgtd")
    require_tool("tgtadm")
    daemon = Tgtd(tmp_path).start()
    try:
        fill(tmp_path / "fault.img", SIZE)
        daemon.add_target(1, IQN, {1: tmp_path / "fault.img"})
        yield daemon
    finally:
        daemon.stop()


async def _drop_when(tgtd: Tgtd, progress: list[int], at: int) -> int:
    while progress[0] < at:
        await asyncio.sleep(0.005)
    return await asyncio.get_running_loop().run_in_executor(None, tgtd.drop_connections, 1)


async def test_connection_dropped_during_sustained_writes(
        tgtd: Tgtd, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="blockyard.iscsi.initiator")
    lun = await open_remote(tgtd.url(IQN, 1))
    passes = [os.urandom(SIZE) for _ in range(3)]
    jobs = [(p, off) for p in range(3) for off in range(0, SIZE, CHUNK)]
    progress = [0]
    sem = asyncio.Semaphore(16)

    async def put(p: int, off: int) -> None:
        async with sem:
            await lun.pwrite(off, memoryview(passes[p])[off:off + CHUNK])
            progress[0] += 1

    drops = asyncio.gather(_drop_when(tgtd, progress, len(jobs) // 5),
                           _drop_when(tgtd, progress, len(jobs) * 3 // 5))
    try:
        await asyncio.wait_for(asyncio.gather(*(put(p, off) for p, off in jobs)), 60)
        await lun.flush()
        dropped = await drops
    finally:
        await lun.close()
    assert progress[0] == len(jobs)
    assert all(n >= 1 for n in dropped), dropped  # the drops hit a live session each time
    assert (tmp_path / "fault.img").read_bytes() == passes[-1]
    text = caplog.text
    assert text.count("reconnecting in") >= 2 and text.count("reconnected: session reinstated") \
        >= 2, text


async def test_connection_dropped_during_full_read(tgtd: Tgtd, tmp_path: Path) -> None:
    lun = await open_remote(tgtd.url(IQN, 1))
    expected = (tmp_path / "fault.img").read_bytes()
    progress = [0]

    async def get(off: int) -> bytes:
        data = bytes(await lun.pread(off, MiB))
        progress[0] += 1
        return data

    drop = asyncio.ensure_future(_drop_when(tgtd, progress, 8))
    try:
        parts = await asyncio.wait_for(asyncio.gather(*(get(off) for off in range(0, SIZE, MiB))),
                                       60)
        assert await drop >= 1
    finally:
        await lun.close()
    assert b"".join(parts) == expected
