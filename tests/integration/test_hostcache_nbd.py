"""Host cache off over NBD: our asyncio client against NbdServer exporting a DirectFile
from /var/tmp: the flags, every data command, two connections sharing one cache,
large reads that must not bypass the layer."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockyard.block.hostcache import open_raw
from blockyard.block.hostcache_direct import DirectFile
from blockyard.nbd import constants as c
from blockyard.transport.nbd_server import Export

MiB = 1 << 20
TF = c.TransmissionFlag


@pytest.fixture
def image() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="blockyard-hc-", dir="/var/tmp"))
    path = d / "disk.raw"
    path.write_bytes(os.urandom(8 * MiB + 1000))  # an unaligned size on purpose
    yield path
    shutil.rmtree(d, ignore_errors=True)


async def test_host_cache_off_over_nbd(nbd_server, nbd_connect, assert_served,  # type: ignore[no-untyped-def]
                                       image: Path) -> None:
    layer = open_raw(image, host_cache=False)
    assert isinstance(layer, DirectFile)
    srv = await nbd_server(Export("disk", layer))
    a = await nbd_connect(srv.host, srv.port)
    b = await nbd_connect(srv.host, srv.port)
    ready = await a.go("disk")
    await b.go("disk")
    flags = ready.export.flags
    for flag in (TF.SEND_FLUSH, TF.SEND_FUA, TF.SEND_TRIM, TF.SEND_WRITE_ZEROES,
                 TF.SEND_FAST_ZERO, TF.CAN_MULTI_CONN):
        assert flags & flag, flag
    assert not flags & TF.READ_ONLY
    assert ready.export.preferred_block == 4096
    blob = os.urandom(3 * MiB + 17)
    assert (await a.call("write", 12345, blob)).error == 0  # unaligned, cached / through
    assert (await a.call("write", 5, b"tiny")).error == 0  # cached
    assert (await b.call("read", 12345, len(blob))).data == blob  # the other connection
    assert (await b.call("read", 0, 9)).data[5:9] == b"tiny"
    tail = os.urandom(1000)
    assert (await b.call("write", 8 * MiB, tail, fua=True)).error == 0  # the partial block
    assert (await a.call("flush")).error == 0
    on_disk = image.read_bytes()
    assert on_disk[12345:12345 + len(blob)] == blob and on_disk[5:9] == b"tiny"
    assert on_disk[8 * MiB:] == tail and len(on_disk) == 8 * MiB + 1000
    assert (await a.call("write_zeroes", MiB, 8192)).error == 0
    assert (await b.call("read", MiB, 8192)).data == bytes(8192)
    await a.disconnect()
    await b.disconnect()
    await assert_served(srv.host, srv.port)
