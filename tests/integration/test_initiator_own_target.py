"""Our initiator against our own asyncio target over loopback: discovery, CHAP one-way
and mutual, digests both ways, a full-disk write and read verified against the
backing file, UNMAP / WRITE SAME / GET LBA STATUS on a thin LUN, FUA and flush,
unaligned requests, CHECK CONDITION decoded into the error, missing targets and LUNs."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blockyard.block.raw import RawFile
from blockyard.errors import BlockError, MediaError, NotFoundError
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskOptions, DiskUnit
from blockyard.transport.iscsi_initiator import discover, open_remote, probe
from blockyard.transport.iscsi_target import IscsiTarget, IscsiTargetServer

DISK = "iqn.2026-11.org.blockyard:own-disk"
CHAP = "iqn.2026-11.org.blockyard:own-chap"
RO = "iqn.2026-11.org.blockyard:own-ro"
MiB = 1 << 20
SIZE = 32 * MiB


def _unit(path: Path, **opts: object) -> DiskUnit:
    with open(path, "wb") as f:
        f.truncate(SIZE)
    layer = RawFile(path, read_only=bool(opts.get("read_only")))
    return DiskUnit(layer, DiskOptions(**opts))  # type: ignore[arg-type]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[IscsiTargetServer]:
    targets = [
        IscsiTarget(DISK, ScsiTargetDevice({0: _unit(tmp_path / "disk.img", thin=True)})),
        IscsiTarget(CHAP, ScsiTargetDevice({0: _unit(tmp_path / "chap.img")}),
                    chap=("alice", "alice-secret"), mutual_chap=("tgt", "target-secret")),
        IscsiTarget(RO, ScsiTargetDevice({0: _unit(tmp_path / "ro.img", read_only=True)})),
    ]
    srv = IscsiTargetServer(targets, nop_interval=0)
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop(grace=0.5)


def url(srv: IscsiTargetServer, iqn: str = DISK, lun: int = 0, user: str = "",
        query: str = "") -> str:
    auth = f"{user}@" if user else ""
    return f"iscsi://{auth}127.0.0.1:{srv.port}/{iqn}/{lun}" + (f"?{query}" if query else "")


async def test_discovery(server: IscsiTargetServer) -> None:
    found = dict(await discover(f"127.0.0.1:{server.port}"))
    assert set(found) == {DISK, CHAP, RO}
    assert found[DISK] == [f"127.0.0.1:{server.port},1"]


async def test_full_disk_with_digests_and_mutual_chap(server: IscsiTargetServer,
                                                      tmp_path: Path) -> None:
    query = "header_digest=crc32c&data_digest=crc32c&target_user=tgt&target_password=" \
            "target-secret"
    lun = await open_remote(url(server, CHAP, user="alice%alice-secret", query=query))
    keys = lun.props.negotiated
    assert (keys["HeaderDigest"], keys["DataDigest"], keys["AuthMethod"]) == \
        ("CRC32C", "CRC32C", "CHAP")
    assert keys["MaxBurstLength"] == str(MiB) and keys["InitialR2T"] == "No"
    new = os.urandom(SIZE)
    try:
        sem = asyncio.Semaphore(16)

        async def put(off: int) -> None:
            async with sem:
                await lun.pwrite(off, memoryview(new)[off:off + 2 * MiB], fua=off == 0)

        await asyncio.gather(*(put(off) for off in range(0, SIZE, 2 * MiB)))
        await lun.flush()
        assert (tmp_path / "chap.img").read_bytes() == new
        back = await asyncio.gather(*(lun.pread(o, 8 * MiB) for o in range(0, SIZE, 8 * MiB)))
        assert b"".join(bytes(b) for b in back) == new
    finally:
        await lun.close()


@pytest.mark.parametrize("user, query, why", [
    ("alice%wrong", "", "authentication failure (0x0201)"),
    ("", "", "authentication failure (0x0201)"),
    ("alice%alice-secret", "target_user=tgt&target_password=wrong",
     "invalid mutual CHAP response from the target"),
])
async def test_chap_refusals_are_one_line(server: IscsiTargetServer, user: str, query: str,
                                          why: str) -> None:
    with pytest.raises(MediaError) as info:
        await open_remote(url(server, CHAP, user=user, query=query))
    assert why in str(info.value) and "\n" not in str(info.value)
    assert "wrong" not in str(info.value).replace("target_password=***", "")


async def test_thin_lun_unmap_write_same_extents(server: IscsiTargetServer,
                                                 tmp_path: Path) -> None:
    lun = await open_remote(url(server))
    try:
        assert lun.can_trim and lun.can_extents and lun.uuid.startswith("naa.")
        await lun.pwrite(0, os.urandom(8 * MiB))
        assert (await lun.extents(0, 8 * MiB))[0].flags == 0
        await lun.trim(MiB, 2 * MiB)
        assert [(e.length, e.flags & 1) for e in await lun.extents(MiB, 2 * MiB)] == \
            [(2 * MiB, 1)]
        await lun.zero(4 * MiB + 100, MiB, may_trim=True)  # edges written, middle unmapped
        data = bytes(await lun.pread(0, 8 * MiB))
        assert data[MiB:3 * MiB] == bytes(2 * MiB)
        assert data[4 * MiB + 100:5 * MiB + 100] == bytes(MiB)
        assert data[:MiB] == (tmp_path / "disk.img").read_bytes()[:MiB]
        info = lun.info()
        assert info.format == "iscsi" and info.virtual_size == SIZE and info.uuid == lun.uuid
    finally:
        await lun.close()


async def test_unaligned_requests(server: IscsiTargetServer, tmp_path: Path) -> None:
    lun = await open_remote(url(server))
    try:
        await lun.pwrite(1000, b"hello, world")
        assert bytes(await lun.pread(998, 16)) == b"\0\0hello, world\0\0"
        assert (tmp_path / "disk.img").read_bytes()[1000:1012] == b"hello, world"
    finally:
        await lun.close()


async def test_check_condition_is_decoded(server: IscsiTargetServer) -> None:
    lun = await open_remote(url(server, RO))
    try:
        assert lun.read_only and not lun.can_write
        with pytest.raises(BlockError) as info:
            await lun._pwrite(0, bytes(4096), False)  # past the layer's own read-only check
        assert info.value.errno == errno.EPERM
        assert str(info.value) == (f"{url(server, RO)}: WRITE(16) at LBA 0: CHECK CONDITION: "
                                   "DATA PROTECT, WRITE PROTECTED (7/27/00)")
    finally:
        await lun.close()


async def test_missing_target_and_lun(server: IscsiTargetServer) -> None:
    with pytest.raises(NotFoundError, match="target not found"):
        await probe(url(server, DISK + "-gone"))
    with pytest.raises(NotFoundError, match="LUN 3 does not exist"):
        await probe(url(server, DISK, 3))
