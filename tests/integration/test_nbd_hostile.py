"""Hostile peers over raw sockets with scapy-crafted NBD messages: bad magic, hang-ups
with replies queued or requests half sent, absurd option lengths, random fields.
After each, the server must still serve another client correctly, and a
well-behaved client connected before the attack must be unaffected."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import pytest
from scapy.fields import IntField, LongField, ShortField, XIntField, XLongField
from scapy.packet import Packet

from blockyard.block.ram import RamDisk
from blockyard.block.raw import RawFile
from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client import ClientConnection
from blockyard.nbd.events import NEED_DATA
from blockyard.transport.nbd_server import Export

MiB = 1 << 20


class NBDClientFlags(Packet):
    name = "NBD client flags"
    fields_desc = [IntField("flags", 3)]


class NBDOption(Packet):
    name = "NBD option"
    fields_desc = [XLongField("magic", c.IHAVEOPT), IntField("option", c.Opt.GO),
                   IntField("length", None)]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.length is None:  # the length field covers the payload
            pkt = pkt[:12] + struct.pack(">I", len(pay))
        return pkt + pay


class NBDRequest(Packet):
    name = "NBD request"
    fields_desc = [XIntField("magic", c.REQUEST_MAGIC), ShortField("flags", 0),
                   ShortField("type", c.Cmd.READ), XLongField("cookie", 1),
                   LongField("offset", 0), IntField("length", 512)]


async def raw(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    greeting = await asyncio.wait_for(reader.readexactly(18), 5)
    assert greeting[:16] == wire.GREETING.pack(c.NBDMAGIC, c.IHAVEOPT, 0)[:16]
    return reader, writer


async def raw_ready(host: str, port: int, name: str = "disk",
                    structured: bool = False) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw socket in transmission: the handshake bytes are crafted with scapy and the
    replies parsed by the client core."""
    reader, writer = await raw(host, port)
    core = ClientConnection()
    core.receive_data(wire.greeting(3))
    core.next_event()
    core.data_to_send()
    msgs = bytes(NBDClientFlags(flags=3))
    if structured:
        core.structured_reply()
        msgs += bytes(NBDOption(option=c.Opt.STRUCTURED_REPLY))
    writer.write(msgs)
    while structured and not core.structured:
        await _pump(core, reader)
    core.data_to_send()
    core.go(name)
    writer.write(bytes(NBDOption(option=c.Opt.GO) / wire.info_request(name, [3])))
    while core.export is None:
        await _pump(core, reader)
    return reader, writer


async def _pump(core: ClientConnection, reader: asyncio.StreamReader) -> None:
    data = await asyncio.wait_for(reader.read(65536), 5)
    assert data, "the server closed the connection during the handshake"
    core.receive_data(data)
    while (event := core.next_event()) is not NEED_DATA:
        assert not isinstance(event, Exception)


async def closed_by_server(reader: asyncio.StreamReader, limit: float = 5) -> bytes:
    """Everything the server sends until it closes (fails if it does not)."""
    data = b""
    async with asyncio.timeout(limit):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def bystander(connect, host: str, port: int):  # type: ignore[no-untyped-def]
    client = await connect(host, port)
    await client.go("disk")
    assert (await client.call("write", 0, b"before")).error == 0
    return client


async def still_fine(client) -> None:  # type: ignore[no-untyped-def]
    reply = await client.call("read", 0, 6)
    assert reply.error == 0 and reply.data == b"before"
    await client.disconnect()


# ---- garbage --------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", [
    bytes(NBDClientFlags(flags=3)) + bytes(NBDOption(magic=0xDEADBEEFDEADBEEF, option=3)),
    bytes(NBDClientFlags(flags=0)),  # not fixed newstyle
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    bytes(random.Random(7).randbytes(4096)),
], ids=["option-magic", "flags-0", "http", "random"])
async def test_garbage_during_handshake_drops_only_that_connection(  # type: ignore[no-untyped-def]
        nbd_server, nbd_connect, assert_served, attack: bytes) -> None:
    srv = await nbd_server()
    good = await bystander(nbd_connect, srv.host, srv.port)
    reader, writer = await raw(srv.host, srv.port)
    writer.write(attack)
    await closed_by_server(reader)
    writer.close()
    await still_fine(good)
    await assert_served(srv.host, srv.port)


@pytest.mark.parametrize("magic", [0x12560953, c.SIMPLE_REPLY_MAGIC, 0, 0x25609514])
@pytest.mark.parametrize("structured", [False, True])
async def test_bad_request_magic_drops_only_that_connection(  # type: ignore[no-untyped-def]
        nbd_server, nbd_connect, assert_served, magic: int, structured: bool) -> None:
    srv = await nbd_server()
    good = await bystander(nbd_connect, srv.host, srv.port)
    reader, writer = await raw_ready(srv.host, srv.port, structured=structured)
    writer.write(bytes(NBDRequest(cookie=1)) + bytes(NBDRequest(magic=magic, cookie=2)))
    data = await closed_by_server(reader)
    assert data[:16] == wire.simple_reply(1) or data[:4] == wire.U32.pack(
        c.STRUCTURED_REPLY_MAGIC)  # the valid request before it was answered
    writer.close()
    await still_fine(good)
    await assert_served(srv.host, srv.port)


# ---- hang-ups ---------------------------------------------------------------------------------
async def read_flood_then_hang_up(host: str, port: int, rst: bool) -> None:
    reader, writer = await raw_ready(host, port)
    writer.write(b"".join(bytes(NBDRequest(cookie=i, offset=(i % 7) * MiB, length=MiB))
                          for i in range(64)))
    await writer.drain()
    await asyncio.sleep(0.05)  # let the server start answering
    sock = writer.get_extra_info("socket")
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


@pytest.mark.parametrize("rst", [False, True], ids=["close", "reset"])
@pytest.mark.parametrize("layer", ["ram", "file"])
async def test_hang_up_with_64_large_replies_queued(  # type: ignore[no-untyped-def]
        nbd_server, nbd_connect, assert_served, tmp_path, rst: bool, layer: str) -> None:
    if layer == "file":
        path = tmp_path / "disk.img"
        path.write_bytes(bytes(8 * MiB))
        srv = await nbd_server(Export("disk", RawFile(path)))
    else:
        srv = await nbd_server()
    good = await bystander(nbd_connect, srv.host, srv.port)
    for _ in range(2):
        await read_flood_then_hang_up(srv.host, srv.port, rst)
    await still_fine(good)
    await assert_served(srv.host, srv.port)
    async with asyncio.timeout(10):  # and the dropped connections are cleaned up
        while len(srv.server.connections) > 0:
            await asyncio.sleep(0.02)


def test_hang_up_with_replies_queued_subprocess(blockyard_proc, assert_served,  # type: ignore[no-untyped-def]
                                               tmp_path) -> None:
    """The nbdkit 1.32 crash scenario, against the real process serving a raw file."""
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(8 * MiB))
    proc = blockyard_proc(path)

    async def attack() -> None:
        for rst in (False, True, False):
            await read_flood_then_hang_up(proc.host, proc.port, rst)
        await asyncio.sleep(0.2)
        assert proc.proc.poll() is None, "the server died"
        await assert_served(proc.host, proc.port)

    asyncio.run(attack())
    assert proc.terminate() == 0


@pytest.mark.parametrize("cut", [1, 20, 27, 28 + 1000], ids=lambda n: f"{n}-bytes")
async def test_half_sent_request_then_hang_up(nbd_server, nbd_connect, assert_served,  # type: ignore[no-untyped-def]
                                              cut: int) -> None:
    srv = await nbd_server()
    good = await bystander(nbd_connect, srv.host, srv.port)
    reader, writer = await raw_ready(srv.host, srv.port)
    request = bytes(NBDRequest(type=c.Cmd.WRITE, cookie=5, length=100_000)) + bytes(100_000)
    writer.write(request[:cut])
    await writer.drain()
    await asyncio.sleep(0.02)
    writer.close()
    await still_fine(good)
    await assert_served(srv.host, srv.port)


@pytest.mark.parametrize("option", [c.Opt.INFO, c.Opt.LIST, 4242, c.Opt.EXPORT_NAME])
async def test_option_with_a_huge_length(nbd_server, nbd_connect, assert_served,  # type: ignore[no-untyped-def]
                                         option: int) -> None:
    srv = await nbd_server()
    good = await bystander(nbd_connect, srv.host, srv.port)
    reader, writer = await raw(srv.host, srv.port)
    writer.write(bytes(NBDClientFlags()) + bytes(NBDOption(option=option, length=0xFFFFFFF0))
                 + bytes(256 << 10))
    await writer.drain()
    if option == c.Opt.EXPORT_NAME:
        await closed_by_server(reader)  # an export name cannot be that long: fatal
    else:
        with pytest.raises(TimeoutError):  # being skipped: no reply, no disconnect yet
            await asyncio.wait_for(reader.read(1), 0.2)
    writer.close()
    await still_fine(good)
    await assert_served(srv.host, srv.port)


# ---- random well-framed requests -----------------------------------------------------------
async def test_random_requests_then_hang_up(nbd_server, nbd_connect, assert_served) -> None:  # type: ignore[no-untyped-def]
    srv = await nbd_server(Export("disk", RamDisk(MiB)), Export("victim", RamDisk(4 * MiB)))
    good = await bystander(nbd_connect, srv.host, srv.port)
    rng = random.Random(2024)
    for round_ in range(12):
        reader, writer = await raw_ready(srv.host, srv.port, "victim", bool(round_ % 2))
        out = b""
        for i in range(40):
            cmd = rng.choice([0, 0, 1, 3, 4, 5, 6, 7, 8, 9, rng.randrange(1 << 16)])
            length = rng.choice([0, 1, 512, 4096, 65536, 1 << 20, rng.randrange(1 << 32)])
            pkt = NBDRequest(type=cmd, cookie=i, flags=rng.choice([0, 1, 4, 8, 1 << 9]),
                             offset=rng.choice([0, 4096, 4 * MiB - 512, rng.randrange(1 << 64)]),
                             length=length)
            out += bytes(pkt) + (bytes(min(length, 70_000)) if cmd == 1 else b"")
        writer.write(out)
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.close()
    await still_fine(good)
    await assert_served(srv.host, srv.port)


async def test_many_idle_connections_in_the_handshake(nbd_server, assert_served) -> None:  # type: ignore[no-untyped-def]
    srv = await nbd_server()
    idle = [await raw(srv.host, srv.port) for _ in range(40)]
    await assert_served(srv.host, srv.port)
    for _, writer in idle:
        writer.close()
    await assert_served(srv.host, srv.port)
