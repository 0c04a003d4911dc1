"""Our asyncio client (on the sans-IO ClientConnection) against the real NbdServer
in this event loop, over 127.0.0.1: options, every command, pipelining with
out-of-order completion."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import pytest

from blockyard.block.layer import Layer, Limits
from blockyard.block.ram import RamDisk
from blockyard.block.raw import RawFile
from blockyard.nbd import constants as c
from blockyard.nbd.client_events import (
    Closed,
    ExportInfo,
    MetaContext,
    OptionAck,
    OptionError,
    Ready,
    ServerEntry,
)
from blockyard.transport.nbd_server import Export

MiB = 1 << 20
Cmd = c.Cmd


class Jittery(Layer):
    """Delays every read and write by a few milliseconds chosen from the offset, so
    requests complete in another order than they were sent."""

    def __init__(self, inner: Layer) -> None:
        super().__init__(inner)

    @staticmethod
    async def _nap(offset: int) -> None:
        await asyncio.sleep(((offset // 4096) * 7919 % 13) / 1000)

    async def _pread(self, offset: int, length: int) -> Any:
        await self._nap(offset)
        return await super()._pread(offset, length)

    async def _pwrite(self, offset: int, data: Any, fua: bool) -> None:
        await self._nap(offset)
        await super()._pwrite(offset, data, fua)


class Aligned(RamDisk):
    @property
    def limits(self) -> Limits:
        return Limits(512, 4096, 1 * MiB)


async def test_list_info_go_and_the_default_export(nbd_server, nbd_connect, assert_served) -> None:  # type: ignore[no-untyped-def]
    srv = await nbd_server(Export("a", RamDisk(MiB), "first"), Export("b", RamDisk(2 * MiB)))
    client = await nbd_connect(srv.host, srv.port)
    assert await client.option("list_exports") == [
        ServerEntry("a", "first"), ServerEntry("b", ""), OptionAck(c.Opt.LIST)]
    info = await client.option("info", "b")
    assert isinstance(info[0], ExportInfo) and info[0].size == 2 * MiB
    assert isinstance((await client.option("info", "zz"))[-1], OptionError)
    assert isinstance((await client.option("send_option", 99))[-1], OptionError)
    ready = (await client.option("go", ""))[-1]
    assert isinstance(ready, Ready) and ready.export.size == MiB  # "" is the first export
    await client.disconnect()
    await assert_served(srv.host, srv.port, "b")


@pytest.mark.parametrize("no_zeroes", [True, False])
async def test_export_name(nbd_server, nbd_connect, assert_served, no_zeroes: bool) -> None:  # type: ignore[no-untyped-def]
    srv = await nbd_server()
    client = await nbd_connect(srv.host, srv.port, no_zeroes)
    assert client.core.no_zeroes is no_zeroes
    ready = (await client.option("export_name", "disk"))[-1]
    assert isinstance(ready, Ready) and ready.export.size == 8 * MiB
    assert (await client.call("write", 0, b"abc")).error == 0
    assert (await client.call("read", 0, 3)).data == b"abc"
    await client.disconnect()
    refused = await nbd_connect(srv.host, srv.port)
    assert isinstance((await refused.option("export_name", "nope"))[-1], Closed)
    await assert_served(srv.host, srv.port)


@pytest.mark.parametrize("structured", [True, False])
async def test_every_command(nbd_server, nbd_connect, assert_served, structured: bool) -> None:  # type: ignore[no-untyped-def]
    srv = await nbd_server()
    client = await nbd_connect(srv.host, srv.port)
    ready = await client.go("disk", structured, ("base:allocation",) if structured else ())
    assert ready.export.has(c.TransmissionFlag.SEND_FLUSH | c.TransmissionFlag.SEND_TRIM)
    blob = os.urandom(3 * MiB)
    assert (await client.call("write", 4096, blob, fua=True)).error == 0
    assert (await client.call("read", 4096, len(blob))).data == blob
    assert (await client.call("flush")).error == 0
    assert (await client.call("cache", 0, MiB)).error == 0
    assert (await client.call("trim", 4096, 8192)).error == 0
    assert (await client.call("write_zeroes", MiB, 4096, no_hole=True)).error == 0
    assert (await client.call("write_zeroes", MiB + 4096, 4096, fast=True)).error == 0
    assert (await client.call("read", 4096, 8192)).data == bytes(8192)
    if structured:
        status = await client.call("block_status", 0, 16384)
        (extents,) = status.extents.values()
        hole = c.STATE_HOLE | c.STATE_ZERO  # page 0 never written, pages 1-2 trimmed
        assert extents == [(12288, hole), (4096, 0)]
        one = await client.call("block_status", 0, 8 * MiB, req_one=True)
        assert len(next(iter(one.extents.values()))) == 1
    errors = [await client.call("request", Cmd.READ, 8 * MiB - 1, 2, check=False),
              await client.call("request", Cmd.WRITE, 8 * MiB - 1, 2, 0, b"xy", check=False),
              await client.call("request", 31, 0, 0, check=False)]
    assert [r.error for r in errors] == [c.EINVAL, c.ENOSPC, c.EINVAL]
    assert all(bool(r.errors) == structured for r in errors)  # structured errors say why
    await client.disconnect()
    await assert_served(srv.host, srv.port)


async def test_read_only_and_min_block(nbd_server, nbd_connect, assert_served) -> None:  # type: ignore[no-untyped-def]
    srv = await nbd_server(Export("ro", RamDisk(MiB), read_only=True),
                           Export("al", Aligned(MiB)))
    client = await nbd_connect(srv.host, srv.port)
    await client.go("ro")
    reply = await client.call("request", Cmd.WRITE, 0, 4, 0, b"nope", check=False)
    assert reply.error == c.EPERM
    await client.disconnect()
    client = await nbd_connect(srv.host, srv.port)
    ready = await client.go("al")
    assert (ready.export.min_block, ready.export.max_block) == (512, MiB)
    bad = [await client.call("request", Cmd.READ, 1, 512, check=False),
           await client.call("request", Cmd.WRITE, 0, 100, 0, bytes(100), check=False),
           await client.call("request", Cmd.READ, 0, 2 * MiB, check=False)]
    assert [r.error for r in bad] == [c.EINVAL] * 3
    big = await client.call("request", Cmd.WRITE, 0, 2 * MiB, 0, bytes(2 * MiB), check=False)
    assert big.error == c.EINVAL  # the oversized payload was skipped, the stream is in step
    assert (await client.call("read", 0, 512)).error == 0
    await client.disconnect()
    await assert_served(srv.host, srv.port, "al")


async def test_meta_contexts(nbd_server, nbd_connect, assert_served) -> None:  # type: ignore[no-untyped-def]
    srv = await nbd_server(Export("a", RamDisk(MiB)), Export("b", RamDisk(MiB)))
    client = await nbd_connect(srv.host, srv.port)
    await client.option("structured_reply")
    listed = await client.option("list_meta_context", "a", ["base:", "x-nope:thing"])
    assert [e.name for e in listed if isinstance(e, MetaContext)] == ["base:allocation"]
    await client.option("set_meta_context", "a", ["base:allocation"])
    ready = (await client.option("go", "b"))[-1]
    assert isinstance(ready, Ready) and ready.export.meta_contexts == {}
    reply = await client.call("request", Cmd.BLOCK_STATUS, 0, 4096, check=False)
    assert reply.error == c.EINVAL
    await client.disconnect()
    await assert_served(srv.host, srv.port)


@pytest.mark.parametrize("structured", [True, False])
async def test_64_pipelined_requests_complete_out_of_order(nbd_server, nbd_connect,  # type: ignore[no-untyped-def]
                                                           assert_served,
                                                           structured: bool) -> None:
    srv = await nbd_server(Export("disk", Jittery(RamDisk(4 * MiB))))
    client = await nbd_connect(srv.host, srv.port)
    await client.go("disk", structured)
    rng = random.Random(64)
    blocks = {i: rng.randbytes(4096) for i in range(32)}
    writes = [client.submit("write", i * 4096, blob) for i, blob in blocks.items()]
    assert all(r.error == 0 for r in await asyncio.gather(*writes))
    futs = []
    for i in range(64):  # 32 reads of what was written + 32 more writes elsewhere
        if i % 2:
            futs.append(client.submit("read", (i // 2) * 4096, 4096))
        else:
            futs.append(client.submit("write", (40 + i) * 4096, bytes([i]) * 4096))
    sent = [f for f in client.replies]
    results = await asyncio.wait_for(asyncio.gather(*futs), 30)
    assert all(r.error == 0 for r in results)
    assert [r.data for r in results[1::2]] == [bytes(blocks[i]) for i in range(32)]
    order = client.completion_order[-64:]
    assert sorted(order) == sorted(sent) and order != sent  # replies came out of order
    await client.disconnect()
    await assert_served(srv.host, srv.port)


@pytest.mark.parametrize("structured", [True, False])
async def test_large_reads_of_a_raw_file(nbd_server, nbd_connect, assert_served, tmp_path,  # type: ignore[no-untyped-def]
                                         structured: bool) -> None:
    """Reads of 256 KiB and more take the transport's thread / sendfile path."""
    path = tmp_path / "disk.img"
    blob = os.urandom(6 * MiB)
    path.write_bytes(blob)
    srv = await nbd_server(Export("disk", RawFile(path)))
    client = await nbd_connect(srv.host, srv.port)
    await client.go("disk", structured)
    futs = [client.submit("read", off, n) for off, n in
            [(0, MiB), (4096, 4 * MiB), (5 * MiB, MiB), (17, 300_000), (0, 4096)]]
    for (off, n), reply in zip([(0, MiB), (4096, 4 * MiB), (5 * MiB, MiB), (17, 300_000),
                                (0, 4096)], await asyncio.gather(*futs), strict=True):
        assert reply.error == 0 and reply.data == blob[off:off + n]
    await client.disconnect()
    await assert_served(srv.host, srv.port)
