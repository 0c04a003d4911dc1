"""Faults between our initiator and our target, through a loopback TCP proxy that can
cut connections (RST) or swallow their traffic (a dead peer that never answers):
reconnect with reissue and verified data, NOP-Out dead-peer detection, a slow target
(per-command timeout, ABORT TASK, ETIMEDOUT), a target asking for logout, a login
redirect, and the I/O error once reconnecting has failed for the configured bound."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blockyard.block.layer import Buffer, Layer
from blockyard.block.ram import RamDisk
from blockyard.block.raw import RawFile
from blockyard.errors import BlockError
from blockyard.iscsi.framing import PduReader, encode_pdu_bytes
from blockyard.iscsi.pdu_target import LoginResponse
from blockyard.iscsi.textkeys import encode_text
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskUnit
from blockyard.transport.iscsi_initiator import open_remote
from blockyard.transport.iscsi_target import IscsiTarget, IscsiTargetServer

DISK = "iqn.2026-11.org.blockyard:fault-disk"
SLOW = "iqn.2026-11.org.blockyard:fault-slow"
MiB = 1 << 20
SIZE = 16 * MiB
LOG = "blockyard.iscsi.initiator"


class Proxy:
    """127.0.0.1 proxy to the target: ``cut()`` resets, ``blackhole()`` goes silent."""

    def __init__(self, port: int) -> None:
        self.target_port = port
        self.port = 0
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.silent: set[asyncio.StreamWriter] = set()
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _link(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tr, tw = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.links.append((w, tw))
        await asyncio.gather(self._pump(r, tw), self._pump(tr, w), return_exceptions=True)

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(1 << 16):
            if w not in self.silent:
                w.write(data)
                await w.drain()
        w.close()

    def cut(self) -> None:
        for client, upstream in self.links:
            client.transport.abort()
            upstream.transport.abort()
        self.links.clear()

    def blackhole(self) -> None:
        for client, upstream in self.links:
            self.silent.update((client, upstream))

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


class SlowLayer(Layer):
    """Reads past 1 MiB wait for ``release``."""

    def __init__(self, inner: Layer) -> None:
        super().__init__(inner)
        self.release = asyncio.Event()

    async def _pread(self, offset: int, length: int) -> Buffer:
        if offset >= MiB:
            await self.release.wait()
        return await super()._pread(offset, length)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[IscsiTargetServer]:
    (tmp_path / "disk.img").write_bytes(bytes(SIZE))
    slow = SlowLayer(RamDisk(SIZE))
    targets = [IscsiTarget(DISK, ScsiTargetDevice({0: DiskUnit(RawFile(tmp_path / "disk.img"))})),
               IscsiTarget(SLOW, ScsiTargetDevice({0: DiskUnit(slow)}))]
    srv = IscsiTargetServer(targets, nop_interval=0)
    srv.slow = slow  # type: ignore[attr-defined]
    await srv.start("127.0.0.1", 0)
    yield srv
    slow.release.set()
    await srv.stop(grace=0.2)


@pytest.fixture
async def proxy(server: IscsiTargetServer) -> AsyncIterator[Proxy]:
    p = await Proxy(server.port).start()
    yield p
    await p.stop()


async def _writes(lun: Layer, passes: list[bytes], chunk: int, progress: list[int]) -> None:
    sem = asyncio.Semaphore(16)

    async def put(data: bytes, off: int) -> None:
        async with sem:
            await lun.pwrite(off, memoryview(data)[off:off + chunk])
            progress[0] += 1

    await asyncio.gather(*(put(p, off) for p in passes for off in range(0, SIZE, chunk)))


async def _after(progress: list[int], n: int) -> None:
    while progress[0] < n:
        await asyncio.sleep(0.002)


async def test_cut_connection_during_writes(server: IscsiTargetServer, proxy: Proxy,
                                            tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOG)
    lun = await open_remote(f"iscsi://127.0.0.1:{proxy.port}/{DISK}/0")
    passes, progress = [os.urandom(SIZE) for _ in range(2)], [0]
    try:
        run = asyncio.ensure_future(_writes(lun, passes, 128 << 10, progress))
        await _after(progress, 40)
        proxy.cut()
        await asyncio.wait_for(run, 30)
    finally:
        await lun.close()
    assert (tmp_path / "disk.img").read_bytes() == passes[-1]
    assert "reconnected: session reinstated" in caplog.text


async def test_silent_peer_found_dead_by_nop(server: IscsiTargetServer, proxy: Proxy,
                                             tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOG)
    lun = await open_remote(f"iscsi://127.0.0.1:{proxy.port}/{DISK}/0", nop_interval=0.2,
                            nop_timeout=0.4)
    data = os.urandom(SIZE)
    try:
        await lun.pwrite(0, data[:MiB])
        proxy.blackhole()
        await asyncio.wait_for(lun.pwrite(MiB, memoryview(data)[MiB:]), 30)
        assert bytes(await lun.pread(0, SIZE)) == data
    finally:
        await lun.close()
    assert "NOP-Out ping not answered" in caplog.text
    assert (tmp_path / "disk.img").read_bytes() == data


async def test_slow_target_times_out_with_abort_task(server: IscsiTargetServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOG)
    url = f"iscsi://127.0.0.1:{server.port}/{SLOW}/0?timeout=1"
    lun = await open_remote(url)
    try:
        assert len(bytes(await lun.pread(0, 4096))) == 4096  # the fast part answers
        loop = asyncio.get_running_loop()
        loop.call_later(2.0, server.slow.release.set)  # type: ignore[attr-defined]
        with pytest.raises(BlockError) as info:
            await lun.pread(2 * MiB, 4096)
        assert info.value.errno == errno.ETIMEDOUT
        assert str(info.value) == (f"{url}: opcode 88h: no answer within 1 s; aborted "
                                   "(ABORT TASK response 0)")
        assert len(bytes(await lun.pread(2 * MiB, 4096))) == 4096  # the session lives on
    finally:
        await lun.close()
    assert "ABORT TASK answered with response 0" in caplog.text


async def test_target_asks_for_logout(server: IscsiTargetServer, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOG)
    lun = await open_remote(f"iscsi://127.0.0.1:{server.port}/{DISK}/0")
    passes, progress = [os.urandom(SIZE)], [0]
    try:
        run = asyncio.ensure_future(_writes(lun, passes, 64 << 10, progress))
        await _after(progress, 30)
        for conn in list(server.connections):
            conn.request_logout(2)
        await asyncio.wait_for(run, 30)
    finally:
        await lun.close()
    assert "asynchronous event 1" in caplog.text and "asked us to log out" in caplog.text
    assert (tmp_path / "disk.img").read_bytes() == passes[0]


async def test_login_redirect_is_followed(server: IscsiTargetServer) -> None:
    async def redirector(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        reader = PduReader(1 << 16)
        while (pdu := reader.next_pdu()) is None:
            reader.feed(await r.read(4096))
        address = f"127.0.0.1:{server.port},1"
        w.write(encode_pdu_bytes(LoginResponse(status=0x0101, itt=pdu.itt,
                                               data=encode_text({"TargetAddress": address}))))
        await w.drain()
        w.close()

    portal = await asyncio.start_server(redirector, "127.0.0.1", 0)
    port = portal.sockets[0].getsockname()[1]
    try:
        lun = await open_remote(f"iscsi://127.0.0.1:{port}/{DISK}/0")
        assert lun.size == SIZE
        await lun.close()
    finally:
        portal.close()


async def test_io_error_only_after_reconnect_bound(server: IscsiTargetServer,
                                                   proxy: Proxy) -> None:
    lun = await open_remote(f"iscsi://127.0.0.1:{proxy.port}/{DISK}/0?reconnect=0.5")
    try:
        proxy.server.close()  # type: ignore[union-attr]
        proxy.cut()
        started = asyncio.get_running_loop().time()
        with pytest.raises(BlockError) as info:
            await lun.pread(0, 4096)
        assert info.value.errno == errno.EIO
        assert "session lost" in str(info.value) and "reconnecting failed for 0.5 s" in str(
            info.value)
        assert asyncio.get_running_loop().time() - started < 5
        revived = Proxy(server.port)
        revived.server = await asyncio.start_server(revived._link, "127.0.0.1", proxy.port,
                                                    reuse_address=True)
        try:  # the target is reachable again: the next request reconnects and succeeds
            assert len(bytes(await lun.pread(0, 4096))) == 4096
        finally:
            await revived.stop()
    finally:
        await lun.close()
