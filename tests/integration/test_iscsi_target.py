"""The asyncio iSCSI target over loopback, with the real SCSI layer on a RAM disk,
driven by a small initiator on our own codec (``iscsi_client.py``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from iscsi_client import (  # noqa: E402
    INQUIRY,
    TEST_UNIT_READY,
    MiniInitiator,
    read16,
    write16,
)

from blockyard.block.ram import RamDisk  # noqa: E402
from blockyard.iscsi.chap import ChapCredentials  # noqa: E402
from blockyard.iscsi.pdu_initiator import ScsiCommandPdu  # noqa: E402
from blockyard.iscsi.pdu_target import AsyncMessage, DataIn  # noqa: E402
from blockyard.scsi.device import ScsiTargetDevice  # noqa: E402
from blockyard.scsi.disk import DiskUnit  # noqa: E402
from blockyard.transport.iscsi_target import (  # noqa: E402
    IscsiTarget,
    IscsiTargetServer,
    quick_targets,
)

DISK = "iqn.2026-11.org.blockyard:disk"
SECRET = "iscsi-test-secret"
MiB = 1 << 20


def make_server(**kw: object) -> IscsiTargetServer:
    targets = [
        IscsiTarget(DISK, ScsiTargetDevice({0: DiskUnit(RamDisk(64 * MiB))})),
        IscsiTarget("iqn.2026-11.org.blockyard:chap",
                    ScsiTargetDevice({0: DiskUnit(RamDisk(MiB))}),
                    chap=("alice", SECRET), acl=["iqn.2026-11.org.blockyard:it-initiator"]),
    ]
    return IscsiTargetServer(targets, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def server() -> AsyncIterator[IscsiTargetServer]:
    srv = make_server()
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop(grace=0.5)


async def client(srv: IscsiTargetServer, target: str = DISK, **kw: object) -> MiniInitiator:
    ini = MiniInitiator()
    await ini.connect("127.0.0.1", srv.port)
    rsp = await ini.login(target, **kw)  # type: ignore[arg-type]
    assert rsp.status == 0, hex(rsp.status)
    await ini.clear_unit_attentions()
    return ini


async def test_login_inquiry_write_read_logout(server: IscsiTargetServer) -> None:
    ini = await client(server)
    inq = await ini.scsi(INQUIRY, read=96)
    assert inq.status == 0 and inq.data[8:16] == b"BLOCKYRD"
    payload = os.urandom(MiB)  # immediate data, then unsolicited + R2T for the rest
    assert (await ini.scsi(write16(100, 2048), data=payload)).status == 0
    back = await ini.scsi(read16(100, 2048), read=MiB)
    assert back.status == 0 and back.data == payload
    assert sum(isinstance(p, DataIn) for p in back.pdus) == 4  # 1 MiB / 256 KiB segments
    assert await ini.logout() == 0
    await ini.close()


async def test_header_digest_session(server: IscsiTargetServer) -> None:
    ini = await client(server, header_digest="CRC32C,None")
    assert ini.hd
    assert (await ini.scsi(TEST_UNIT_READY)).status == 0
    assert (await ini.scsi(read16(0, 8), read=4096)).status == 0


async def test_many_sessions_at_once(server: IscsiTargetServer) -> None:
    async def worker(n: int) -> None:
        ini = await client(server)
        data = bytes([n]) * 65536
        for i in range(8):
            lba = n * 1024 + i * 128
            assert (await ini.scsi(write16(lba, 128), data=data)).status == 0
            assert (await ini.scsi(read16(lba, 128), read=65536)).data == data
        assert await ini.logout() == 0
        await ini.close()
    await asyncio.gather(*(worker(n) for n in range(12)))
    assert not server.connections or all(c.closed for c in server.connections)


async def test_a_drop_mid_burst_leaves_other_sessions_alone(server: IscsiTargetServer,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    caplog.set_level(logging.INFO, logger="blockyard.iscsi")
    steady = await client(server)
    victim = await client(server)
    # a 4 MiB read: leave after the first Data-In, with the rest still being sent
    await victim.send(ScsiCommandPdu(read=True, itt=77, edtl=4 * MiB, cmdsn=victim.cmdsn,
                                     cdb=read16(0, 8192).ljust(16, b"\0")))
    assert isinstance(await victim.recv(), DataIn)
    victim.writer.transport.abort()  # type: ignore[union-attr]
    # and one more dropped half-way through sending a write's data
    writer = await client(server, keys={"InitialR2T": "Yes", "ImmediateData": "No"})
    await writer.send(ScsiCommandPdu(write=True, itt=78, edtl=MiB, cmdsn=writer.cmdsn,
                                     cdb=write16(0, 2048).ljust(16, b"\0")))
    await writer.recv()  # the R2T
    writer.writer.transport.abort()  # type: ignore[union-attr]
    for _ in range(20):
        data = os.urandom(65536)
        assert (await steady.scsi(write16(4096, 128), data=data)).status == 0
        assert (await steady.scsi(read16(4096, 128), read=65536)).data == data
    await asyncio.sleep(0.1)
    assert len([c for c in server.connections if not c.closed]) == 1
    closed = [r.getMessage() for r in caplog.records if "closed" in r.getMessage()]
    assert len(closed) == 2  # one log line per connection end


async def test_chap_over_tcp(server: IscsiTargetServer) -> None:
    target = "iqn.2026-11.org.blockyard:chap"
    ok = await client(server, target, chap=ChapCredentials("alice", SECRET))
    assert (await ok.scsi(TEST_UNIT_READY)).status == 0
    bad = MiniInitiator()
    await bad.connect("127.0.0.1", server.port)
    assert (await bad.login(target, chap=ChapCredentials("alice", "wrong"))).status == 0x0201
    with pytest.raises(ConnectionError):
        await bad.recv(timeout=2)  # the target closed the connection
    stranger = MiniInitiator()
    await stranger.connect("127.0.0.1", server.port)
    rsp = await stranger.login(target, initiator="iqn.2026-11.org.blockyard:someone-else")
    assert rsp.status == 0x0202


async def test_reinstatement_closes_the_old_session(server: IscsiTargetServer) -> None:
    old = await client(server)
    new = MiniInitiator()
    new.isid = old.isid
    await new.connect("127.0.0.1", server.port)
    assert (await new.login(DISK)).status == 0
    with pytest.raises(ConnectionError):
        await old.recv(timeout=2)
    await new.clear_unit_attentions()


async def test_graceful_stop_asks_for_logout() -> None:
    srv = make_server()
    await srv.start("127.0.0.1", 0)
    ini = await client(srv)
    stopping = asyncio.create_task(srv.stop(grace=2.0))
    msg = await ini.recv()
    assert isinstance(msg, AsyncMessage) and msg.event == 1 and msg.param3 == 2
    assert await ini.logout() == 0
    await asyncio.wait_for(stopping, 5)
    assert not srv.connections


async def test_target_pings_an_idle_initiator() -> None:
    srv = make_server(nop_interval=0.2, nop_timeout=0.3)
    await srv.start("127.0.0.1", 0)
    ini = await client(srv)
    ping = await ini.recv(timeout=2)
    assert type(ping).__name__ == "NopIn" and ping.ttt != 0xFFFFFFFF  # type: ignore[attr-defined]
    with pytest.raises(ConnectionError):  # unanswered: the target hangs up
        await ini.recv(timeout=3)
    await srv.stop(grace=0.1)


def test_quick_targets_name_and_serve_each_export() -> None:
    targets = quick_targets({"My Disk.img": RamDisk(MiB), "b": RamDisk(MiB, read_only=True)},
                            read_only=False)
    assert [t.name for t in targets] == ["iqn.2026-11.org.blockyard:my-disk.img",
                                         "iqn.2026-11.org.blockyard:b"]
    assert targets[1].device.luns[0].write_protected


def test_runs_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        srv = make_server()
        await srv.start("127.0.0.1", 0)
        ini = await client(srv)
        data = os.urandom(300000)
        assert (await ini.scsi(write16(8, 586), data=data + bytes(32))).status == 0
        assert (await ini.scsi(read16(8, 586), read=300032)).data[:300000] == data
        await ini.logout()
        await srv.stop(grace=0.5)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
