"""SIGTERM with requests in flight, against ``python -m blockyard serve FILE`` as a
subprocess (proto.md "Terminating the transmission phase": on shutdown the
server SHOULD finish in-flight requests, or fail them and later ones with
ESHUTDOWN).  Every request in flight gets a reply, success or ESHUTDOWN; the
process exits 0; every acknowledged write is in the file; a restarted server
serves the file correctly.

Two shapes: a burst the server has parsed before the signal (it fits in one
loopback segment) and a 48 MiB flood of writes still travelling when the
signal lands.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from blockyard.nbd import constants as c

MiB = 1 << 20
SIZE = 64 * MiB


def pattern(i: int, n: int = MiB) -> bytes:
    return bytes([i % 251 + 1]) * n


async def scenario(proc, connect, structured: bool) -> dict[int, bytes]:  # type: ignore[no-untyped-def]
    """Returns {offset: data} of every acknowledged write."""
    client = await connect(proc.host, proc.port)
    await client.go("disk", structured)
    bystander = await connect(proc.host, proc.port)  # idle in transmission
    await bystander.go("disk", structured)
    acked: dict[int, bytes] = {}
    for i in range(16):  # settled before the signal
        assert (await client.call("write", i * MiB, pattern(i), fua=i % 2 == 0)).error == 0
        acked[i * MiB] = pattern(i)
    client.cork()  # the burst leaves in one write (< 64 KiB: one loopback segment)
    futs, small = [], {}
    for i in range(48):
        futs.append(client.submit("read", (i % 16) * MiB, MiB))
        if i % 6 == 0:
            offset = (16 + i // 6) * MiB
            small[offset] = pattern(100 + i, 4096)
            futs.append(client.submit("write", offset, small[offset], fua=True))
    client.uncork()
    first, _ = await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED, timeout=20)
    assert first, "no reply before SIGTERM"
    proc.proc.send_signal(signal.SIGTERM)
    replies = await asyncio.wait_for(asyncio.gather(*futs), 30)
    assert all(r.error in (0, c.ESHUTDOWN) for r in replies), replies
    for reply in replies:
        if reply.cmd == c.Cmd.READ and reply.error == 0:
            assert bytes(reply.data or b"") in {pattern(i) for i in range(16)}
    writes = [r for r in replies if r.cmd == c.Cmd.WRITE]
    acked.update({off: data for off, data, r in zip(small, small.values(), writes, strict=True)
                  if r.error == 0})
    for conn in (client, bystander):  # the server closes both; DISC if it has not yet
        if conn.core.state.value == "transmission":
            await conn.disconnect()
    return acked


def assert_acked_writes_are_in(path: Path, acked: dict[int, bytes]) -> None:
    with path.open("rb") as f:
        for offset, data in acked.items():
            f.seek(offset)
            assert f.read(len(data)) == data, f"acknowledged write at {offset} is missing"


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "simple"])
def test_sigterm_with_requests_in_flight(blockyard_proc, nbd_connect, assert_served,  # type: ignore[no-untyped-def]
                                         tmp_path, structured: bool) -> None:
    path = tmp_path / "disk.img"
    with path.open("wb") as f:
        f.truncate(SIZE)
    proc = blockyard_proc(path)
    acked = asyncio.run(scenario(proc, nbd_connect, structured))
    assert proc.proc.wait(30) == 0
    assert len(acked) >= 16
    assert_acked_writes_are_in(path, acked)
    again = blockyard_proc(path)  # the file is served correctly after the restart
    asyncio.run(assert_served(again.host, again.port))
    assert again.terminate() == 0


async def flood_scenario(proc, connect) -> dict[int, bytes]:  # type: ignore[no-untyped-def]
    """48 MiB of writes still travelling when SIGTERM lands: each one is answered."""
    client = await connect(proc.host, proc.port)
    await client.go("disk", True)
    futs = {client.submit("write", i * MiB, pattern(i), fua=i % 8 == 0): i for i in range(48)}
    first, _ = await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED, timeout=20)
    assert first, "no reply before SIGTERM"
    proc.proc.send_signal(signal.SIGTERM)
    replies = await asyncio.wait_for(asyncio.gather(*futs), 30)
    assert all(r.error in (0, c.ESHUTDOWN) for r in replies), replies
    if client.core.state.value == "transmission":
        await client.disconnect()
    return {i * MiB: pattern(i) for fut, i in futs.items() if fut.result().error == 0}


def test_sigterm_mid_flood_answers_every_request(blockyard_proc, nbd_connect,  # type: ignore[no-untyped-def]
                                                 assert_served, tmp_path) -> None:
    path = tmp_path / "disk.img"
    with path.open("wb") as f:
        f.truncate(SIZE)
    proc = blockyard_proc(path)
    acked = asyncio.run(flood_scenario(proc, nbd_connect))
    assert proc.proc.wait(30) == 0
    assert acked, "nothing was acknowledged"
    assert_acked_writes_are_in(path, acked)
    again = blockyard_proc(path)
    asyncio.run(assert_served(again.host, again.port))
    assert again.terminate() == 0
