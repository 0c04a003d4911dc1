"""The target's fast paths over loopback against a raw file: large reads sent with
sendfile (with and without header digests, and the copying path under data digests),
large writes received in place and written on an I/O thread from recycled buffers,
small commands answered at once -- every byte checked against the file."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from iscsi_client import MiniInitiator, read16, write16  # noqa: E402

from blockyard.block.raw import RawFile  # noqa: E402
from blockyard.iscsi.pdu_target import DataIn  # noqa: E402
from blockyard.transport.iscsi_target import IscsiTargetServer, quick_targets  # noqa: E402

MiB = 1 << 20
SIZE = 16 * MiB
IQN = "iqn.2026-11.org.blockyard:disk"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[IscsiTargetServer, Path]]:
    path = tmp_path / "disk.img"
    path.write_bytes(random.Random(7).randbytes(SIZE))
    layer = RawFile(path)
    server = IscsiTargetServer(quick_targets({"disk": layer}, False))
    await server.start("127.0.0.1", 0)
    yield server, path
    await server.stop(grace=0.5)
    await layer.close()


async def session(server: IscsiTargetServer, data_digest: bool = False,
                  **kw: object) -> MiniInitiator:
    ini = MiniInitiator()
    await ini.connect("127.0.0.1", server.port)
    assert (await ini.login(IQN, **kw)).status == 0  # type: ignore[arg-type]
    ini.codec.data_digest = data_digest  # the codec checks the digest of what it receives
    await ini.clear_unit_attentions()
    return ini


def file_bytes(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


@pytest.mark.parametrize("digest", ["None", "CRC32C"])
async def test_large_writes_and_reads_round_trip(served: tuple[IscsiTargetServer, Path],
                                                 digest: str) -> None:
    server, path = served
    ini = await session(server, header_digest=digest)
    rnd = random.Random(digest)
    for i in range(6):
        n = (1 << 20, 3 << 19, 4096, 65536 + 512, 1 << 18, 2 << 20)[i]
        lba = rnd.randrange(0, (SIZE - n) // 512)
        payload = rnd.randbytes(n)
        assert (await ini.scsi(write16(lba, n // 512), data=payload)).status == 0
        back = await ini.scsi(read16(lba, n // 512), read=n)
        assert back.status == 0 and back.data == payload
        assert file_bytes(path, lba * 512, n) == payload
    whole = await ini.scsi(read16(0, 4 * MiB // 512), read=4 * MiB)  # by reference
    assert whole.status == 0 and whole.data == file_bytes(path, 0, 4 * MiB)
    assert sum(isinstance(p, DataIn) for p in whole.pdus) == 16  # 256 KiB segments
    assert await ini.logout() == 0
    await ini.close()
    assert server.threaded_writes == 0


async def test_reads_under_data_digests_are_copied_and_digested(
        served: tuple[IscsiTargetServer, Path]) -> None:
    server, path = served
    ini = await session(server, data_digest=True, keys={"DataDigest": "CRC32C"})
    for lba, n in ((0, 2 * MiB), (8191, 4096), (12345, MiB)):
        back = await ini.scsi(read16(lba, n // 512), read=n)
        assert back.status == 0 and back.data == file_bytes(path, lba * 512, n)
    await ini.close()


async def test_many_small_commands_answered_at_once(
        served: tuple[IscsiTargetServer, Path]) -> None:
    server, path = served
    ini = await session(server)
    expect = bytearray(file_bytes(path, 0, MiB))
    rnd = random.Random(3)
    for _ in range(200):
        lba = rnd.randrange(0, MiB // 512 - 8)
        if rnd.random() < 0.5:
            data = os.urandom(4096)
            assert (await ini.scsi(write16(lba, 8), data=data)).status == 0
            expect[lba * 512:lba * 512 + 4096] = data
        else:
            back = await ini.scsi(read16(lba, 8), read=4096)
            assert back.data == expect[lba * 512:lba * 512 + 4096]
    assert file_bytes(path, 0, MiB) == bytes(expect)
    await ini.close()
