"""Write modes wired for real: registered media attached in a live server, two libnbd
clients at once (the second bound to 127.0.0.2, another client identity)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from blockyard.block.formats import open_image
from blockyard.control.live import LiveServer
from blockyard.media import attach_ops, modify, ops
from blockyard.media.context import Context
from blockyard.media.registry import Registry
from blockyard.transport.nbd_server import ExportTable, NbdServer

nbd = pytest.importorskip("nbd")
MiB = 1 << 20
BASE = b"base" * 128


def _connect(port: int, source: str, name: str) -> Any:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_socket(sock.detach())
    return h


@dataclass
class Server:
    ctx: Context
    live: LiveServer
    port: int
    tmp: Path

    async def disk(self, name: str, mode: str, fmt: str = "vdi") -> str:
        path = self.tmp / name
        await ops.media_add(self.ctx, str(path), create_size=4 * MiB, format=fmt,
                            write_mode=mode)
        img = open_image(path)
        await img.pwrite(0, BASE)
        await img.close()
        await attach_ops.attach(self.ctx, "c", name, name=name)
        return name

    async def client(self, source: str, export: str) -> Any:
        return await asyncio.to_thread(_connect, self.port, source, export)

    async def leave(self, h: Any, export: str, who: str) -> None:
        await asyncio.to_thread(h.shutdown)
        hub = self.live.nbd.exports.lookup(export).hub  # type: ignore[union-attr]
        for _ in range(200):  # the session ends when the server sees the connection go
            if who not in hub.holders:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{who} still holds {export}")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    reg = Registry(tmp_path / "state")
    nbd_server = NbdServer(ExportTable())
    live = LiveServer(reg, nbd_server, grace=1)
    ctx = Context(reg, tmp_path / "state", live)
    await attach_ops.controller_add(ctx, "c", "sata")
    port = (await nbd_server.listen("127.0.0.1", 0))[1]
    yield Server(ctx, live, port, tmp_path)
    await nbd_server.stop(grace=1)
    await live.close_all()
    reg.close()


async def test_normal_refuses_a_second_client(server: Server) -> None:
    name = await server.disk("n.vdi", "normal")
    a = await server.client("127.0.0.1", name)
    with pytest.raises(nbd.Error) as err:
        await server.client("127.0.0.2", name)
    assert "policy" in str(err.value).lower()
    await asyncio.to_thread(a.pwrite, b"a" * 512, 0)
    await server.leave(a, name, "127.0.0.1")
    b = await server.client("127.0.0.2", name)
    assert await asyncio.to_thread(b.pread, 512, 0) == b"a" * 512
    await asyncio.to_thread(b.shutdown)


async def test_shareable_both_write_and_see(server: Server) -> None:
    name = await server.disk("s.img", "shareable", fmt="raw")
    a = await server.client("127.0.0.1", name)
    b = await server.client("127.0.0.2", name)
    assert a.can_multi_conn()
    await asyncio.to_thread(a.pwrite, b"A" * 512, 0)
    await asyncio.to_thread(b.pwrite, b"B" * 512, 512)
    for h in (a, b):
        assert await asyncio.to_thread(h.pread, 1024, 0) == b"A" * 512 + b"B" * 512
        await asyncio.to_thread(h.shutdown)


async def test_multiattach_isolates_clients_and_keeps_their_writes(server: Server) -> None:
    name = await server.disk("m.vdi", "multiattach")
    a = await server.client("127.0.0.1", name)
    b = await server.client("127.0.0.2", name)
    assert not a.is_read_only() and not a.can_multi_conn()
    await asyncio.to_thread(a.pwrite, b"A" * 512, 0)
    assert await asyncio.to_thread(b.pread, 512, 0) == BASE  # isolated
    await asyncio.to_thread(b.pwrite, b"B" * 512, 512)
    await server.leave(a, name, "127.0.0.1")
    await server.leave(b, name, "127.0.0.2")
    a = await server.client("127.0.0.1", name)
    b = await server.client("127.0.0.2", name)
    assert await asyncio.to_thread(a.pread, 512, 0) == b"A" * 512  # kept across sessions
    assert await asyncio.to_thread(b.pread, 1024, 0) == BASE + b"B" * 512
    for h in (a, b):
        await asyncio.to_thread(h.shutdown)
    diffs = sorted(p.name for p in (server.tmp / "state" / "diffs").iterdir())
    assert [d.split("--")[1] for d in diffs] == ["127.0.0.1.vdi", "127.0.0.2.vdi"]
    assert all(d.startswith("m.vdi-") for d in diffs)  # an operator sees medium and client
    img = open_image(server.tmp / "m.vdi", read_only=True)
    assert await img.pread(0, 1024) == BASE + bytes(512)  # the base was never written
    await img.close()


async def test_immutable_resets_on_the_next_session_unless_autoreset_is_off(
        server: Server) -> None:
    name = await server.disk("i.vdi", "immutable")
    a = await server.client("127.0.0.1", name)
    b = await server.client("127.0.0.2", name)
    await asyncio.to_thread(a.pwrite, b"A" * 512, 0)
    assert await asyncio.to_thread(a.pread, 512, 0) == b"A" * 512
    assert await asyncio.to_thread(b.pread, 512, 0) == BASE
    await server.leave(a, name, "127.0.0.1")
    a = await server.client("127.0.0.1", name)
    assert await asyncio.to_thread(a.pread, 512, 0) == BASE  # reset
    for who, h in (("127.0.0.1", a), ("127.0.0.2", b)):
        await server.leave(h, name, who)
    await attach_ops.detach(server.ctx, "c", 0)
    await modify.media_modify(server.ctx, name, autoreset=False)
    await attach_ops.attach(server.ctx, "c", name, name=name)
    a = await server.client("127.0.0.1", name)
    await asyncio.to_thread(a.pwrite, b"K" * 512, 0)
    await server.leave(a, name, "127.0.0.1")
    a = await server.client("127.0.0.1", name)
    assert await asyncio.to_thread(a.pread, 512, 0) == b"K" * 512  # kept
    await asyncio.to_thread(a.shutdown)


async def test_readonly_refuses_writes(server: Server) -> None:
    name = await server.disk("r.vdi", "readonly")
    a = await server.client("127.0.0.1", name)
    b = await server.client("127.0.0.2", name)  # many readers
    assert a.is_read_only()
    a.set_strict_mode(0)
    with pytest.raises(nbd.Error):
        await asyncio.to_thread(a.pwrite, b"x" * 512, 0)
    assert await asyncio.to_thread(b.pread, 512, 0) == BASE
    for h in (a, b):
        await asyncio.to_thread(h.shutdown)


async def test_multiattach_client_refused_when_the_base_changed(
        server: Server, caplog: pytest.LogCaptureFixture) -> None:
    name = await server.disk("c.vdi", "multiattach")
    a = await server.client("127.0.0.1", name)
    await asyncio.to_thread(a.pwrite, b"A" * 512, 0)
    await server.leave(a, name, "127.0.0.1")
    await attach_ops.detach(server.ctx, "c", 0)
    img = open_image(server.tmp / name)  # someone writes the base behind our back
    await img.pwrite(4096, b"changed" * 10)
    await img.close()
    await attach_ops.attach(server.ctx, "c", name, name=name)
    with pytest.raises(nbd.Error), caplog.at_level("WARNING", logger="blockyard.nbd"):
        await server.client("127.0.0.1", name)
    refused = [r.getMessage() for r in caplog.records if "cannot have export" in r.getMessage()]
    assert len(refused) == 1 and "delete it to start this client afresh" in refused[0]
    b = await server.client("127.0.0.2", name)  # a client without history is fine
    assert await asyncio.to_thread(b.pread, 512, 0) == BASE
    await asyncio.to_thread(b.shutdown)


async def test_detach_closes_client_images_with_their_unflushed_writes(server: Server) -> None:
    name = await server.disk("u.vdi", "multiattach")
    a = await server.client("127.0.0.1", name)
    await asyncio.to_thread(a.pwrite, b"U" * 4096, 2 * MiB)  # a new block, never flushed
    await attach_ops.detach(server.ctx, "c", 0)  # drains the session, closes its image
    (diff,) = (server.tmp / "state" / "diffs").iterdir()
    img = open_image(diff, read_only=True)
    assert img.info().extra["blocks_allocated"] == 1  # the map reached the file
    await img.close()
    del a
