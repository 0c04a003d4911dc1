"""Write modes seen by two real NBD clients (libnbd) from two addresses."""

from __future__ import annotations

import asyncio
import socket

import pytest

from blockyard.block.ram import RamDisk
from blockyard.block.writemode import MediumHub
from blockyard.transport.nbd_server import Export, ExportTable, NbdServer

nbd = pytest.importorskip("nbd")


def _connect(port: int, source: str, name: str = "disk"):  # type: ignore[no-untyped-def]
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_socket(sock.detach())
    return h


@pytest.fixture
async def serve():  # type: ignore[no-untyped-def]
    servers = []

    async def start(mode: str) -> int:
        hub = MediumHub("disk", RamDisk(1 << 20), mode=mode)
        server = NbdServer(ExportTable([Export("disk", hub.base, hub=hub)]))
        servers.append(server)
        return (await server.listen("127.0.0.1", 0))[1]

    yield start
    for s in servers:
        await s.stop(grace=1)


async def test_normal_refuses_a_second_client(serve) -> None:  # type: ignore[no-untyped-def]
    port = await serve("normal")
    first = await asyncio.to_thread(_connect, port, "127.0.0.1")
    with pytest.raises(nbd.Error) as err:
        await asyncio.to_thread(_connect, port, "127.0.0.2")
    assert "policy" in str(err.value)  # NBD_REP_ERR_POLICY (the message names the holder)
    await asyncio.to_thread(first.pwrite, b"a" * 512, 0)
    await asyncio.to_thread(first.shutdown)
    await asyncio.sleep(0.05)
    second = await asyncio.to_thread(_connect, port, "127.0.0.2")
    assert await asyncio.to_thread(second.pread, 512, 0) == b"a" * 512
    await asyncio.to_thread(second.shutdown)


async def test_shareable_lets_both_write_and_see(serve) -> None:  # type: ignore[no-untyped-def]
    port = await serve("shareable")
    a = await asyncio.to_thread(_connect, port, "127.0.0.1")
    b = await asyncio.to_thread(_connect, port, "127.0.0.2")
    assert a.can_multi_conn()
    await asyncio.to_thread(a.pwrite, b"A" * 512, 0)
    await asyncio.to_thread(b.pwrite, b"B" * 512, 512)
    assert await asyncio.to_thread(b.pread, 1024, 0) == b"A" * 512 + b"B" * 512
    for h in (a, b):
        await asyncio.to_thread(h.shutdown)


async def test_readonly_refuses_writes(serve) -> None:  # type: ignore[no-untyped-def]
    port = await serve("readonly")
    a = await asyncio.to_thread(_connect, port, "127.0.0.1")
    assert a.is_read_only()
    a.set_strict_mode(0)
    with pytest.raises(nbd.Error):
        await asyncio.to_thread(a.pwrite, b"x" * 512, 0)
    await asyncio.to_thread(a.shutdown)
