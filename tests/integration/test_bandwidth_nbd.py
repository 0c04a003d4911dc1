"""Bandwidth groups over NBD: two exports (two media) in one group, served by NbdServer
to two clients; the session each request is charged to, a live ``set`` that frees a
starved request, and data passing intact.  No timing is asserted here (see
benchmarks/bandwidth_groups.py for the rates)."""

from __future__ import annotations

import asyncio
import os

from blockyard.block.bandwidth import BandwidthGroups
from blockyard.block.ram import RamDisk
from blockyard.transport.nbd_server import Export

MiB = 1 << 20


async def test_two_media_share_a_group(nbd_server, nbd_connect, assert_served) -> None:  # type: ignore[no-untyped-def]
    groups = BandwidthGroups()
    group = groups.add("Limit", "1G")
    layer_a = groups.wrap(RamDisk(8 * MiB), "Limit", "disk-a")
    layer_b = groups.wrap(RamDisk(8 * MiB), "Limit", "disk-b")
    srv = await nbd_server(Export("a", layer_a), Export("b", layer_b))
    ca = await nbd_connect(srv.host, srv.port)
    cb = await nbd_connect(srv.host, srv.port)
    await ca.go("a")
    await cb.go("b")
    blob = os.urandom(2 * MiB)
    assert (await ca.call("write", 0, blob)).error == 0
    replies = await asyncio.gather(*(ca.call("read", 0, 2 * MiB) for _ in range(4)),
                                   *(cb.call("read", 0, MiB) for _ in range(4)))
    assert all(r.error == 0 for r in replies) and replies[0].data == blob
    assert group.admitted("disk-a") == 2 * MiB + 4 * 2 * MiB  # large reads were not bypassed
    assert group.admitted("disk-b") == 4 * MiB
    await ca.disconnect()
    await cb.disconnect()


async def test_set_frees_a_starved_request(nbd_server, nbd_connect) -> None:  # type: ignore[no-untyped-def]
    groups = BandwidthGroups()
    group = groups.add("slow", "1k")  # 125 bytes/s: an 8 MiB read would take 19 hours
    srv = await nbd_server(Export("d", groups.wrap(RamDisk(16 * MiB), "slow", "client")))
    client = await nbd_connect(srv.host, srv.port)
    await client.go("d")
    assert (await client.call("read", 0, 64 << 10)).error == 0  # the initial burst
    pending = client.submit("read", 0, 8 * MiB)
    for _ in range(50):
        await asyncio.sleep(0.01)
        if group.waiting:
            break
    assert group.waiting == 1 and not pending.done()
    groups.set("slow", "0")  # unlimited, live
    reply = await asyncio.wait_for(pending, 10)
    assert reply.error == 0 and len(reply.data) == 8 * MiB
    await client.disconnect()
