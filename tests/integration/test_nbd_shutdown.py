"""``NbdServer.stop()`` in this event loop, with requests held in flight by a gated
layer, so the order of events is certain (proto.md "Terminating the
transmission phase": finish in-flight requests or fail them, and any later
ones, with ESHUTDOWN)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from blockyard.block.layer import Layer
from blockyard.block.ram import RamDisk
from blockyard.nbd import constants as c
from blockyard.transport.nbd_server import Export, ExportTable, NbdServer

MiB = 1 << 20


class Gated(Layer):
    """Reads wait for ``gate``; ``waiting`` counts the reads parked there."""

    def __init__(self, inner: Layer) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def _pread(self, offset: int, length: int) -> Any:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super()._pread(offset, length)


async def until(predicate: Any, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def served_again(export: Export, assert_served: Any) -> None:
    """After a stop, the same export behind a new server is served correctly."""
    if isinstance(export.layer, Gated):
        export.layer.gate.set()
    server = NbdServer(ExportTable([export]))
    host, port = await server.listen("127.0.0.1", 0)
    try:
        await assert_served(host, port)
    finally:
        await server.stop(grace=2)


@pytest.mark.parametrize("structured", [True, False])
async def test_in_flight_requests_finish_and_later_ones_get_eshutdown(  # type: ignore[no-untyped-def]
        nbd_server, nbd_connect, assert_served, structured: bool) -> None:
    layer = Gated(RamDisk(MiB))
    srv = await nbd_server(Export("disk", layer))
    client = await nbd_connect(srv.host, srv.port)
    await client.go("disk", structured)
    assert (await client.call("write", 0, b"kept")).error == 0
    held = [client.submit("read", 0, 4) for _ in range(8)]
    await until(lambda: layer.waiting == 8)
    stopping = asyncio.create_task(srv.server.stop(grace=10))
    await asyncio.sleep(0.05)
    late = await asyncio.wait_for(client.submit("read", 0, 4), 5)
    assert late.error == c.ESHUTDOWN and bool(late.errors) == structured
    assert not stopping.done()  # still waiting for the held reads
    layer.gate.set()
    replies = await asyncio.wait_for(asyncio.gather(*held), 5)
    assert [(r.error, bytes(r.data or b"")) for r in replies] == [(0, b"kept")] * 8
    await asyncio.wait_for(stopping, 5)
    await asyncio.wait_for(client.closed, 5)  # the server closed the connection
    await served_again(srv.exports.lookup("disk"), assert_served)


async def test_grace_expiry_fails_in_flight_requests_with_eshutdown(  # type: ignore[no-untyped-def]
        nbd_server, nbd_connect, assert_served) -> None:
    layer = Gated(RamDisk(MiB))
    srv = await nbd_server(Export("disk", layer))
    client = await nbd_connect(srv.host, srv.port)
    await client.go("disk", True)
    held = [client.submit("read", i * 4096, 4096) for i in range(4)]
    await until(lambda: layer.waiting == 4)
    await asyncio.wait_for(srv.server.stop(grace=0.2), 5)
    replies = await asyncio.wait_for(asyncio.gather(*held), 5)
    assert [r.error for r in replies] == [c.ESHUTDOWN] * 4
    await served_again(srv.exports.lookup("disk"), assert_served)


async def test_connection_in_the_handshake_is_closed_on_stop(nbd_server, nbd_connect,  # type: ignore[no-untyped-def]
                                                             assert_served) -> None:
    srv = await nbd_server()
    client = await nbd_connect(srv.host, srv.port)
    await asyncio.wait_for(srv.server.stop(grace=2), 5)
    await asyncio.wait_for(client.closed, 5)
    with pytest.raises((ConnectionError, OSError)):
        await nbd_connect(srv.host, srv.port)  # no longer listening
    await served_again(srv.exports.lookup("disk"), assert_served)


async def test_write_half_received_at_shutdown_gets_a_reply(nbd_server, nbd_connect,  # type: ignore[no-untyped-def]
                                                            assert_served) -> None:
    """The server must not slam the door on a request it has started to receive (it
    once closed at once when nothing was in flight, leaving the write unanswered)."""
    srv = await nbd_server()
    client = await nbd_connect(srv.host, srv.port)
    await client.go("disk", True)
    client.cork()
    fut = client.submit("write", 0, b"\x5a" * MiB)
    header, payload = client.core.data_to_send()
    client.corked = False
    client.transport.write(bytes(header) + bytes(payload[: MiB // 2]))
    await asyncio.sleep(0.1)  # the server has the header and half the payload
    stopping = asyncio.create_task(srv.server.stop(grace=5))
    await asyncio.sleep(0.1)
    if not client.transport.is_closing():
        client.transport.write(bytes(payload[MiB // 2:]))
    reply = await asyncio.wait_for(fut, 5)
    assert reply.error in (0, c.ESHUTDOWN)
    await client.disconnect()  # after ESHUTDOWN the client MUST disconnect
    await asyncio.wait_for(stopping, 5)
    await served_again(srv.exports.lookup("disk"), assert_served)
