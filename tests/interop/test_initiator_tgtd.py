"""Our initiator against Debian's tgtd on loopback (started by the test, own control
socket and port, stopped by PID): discovery, login without / with one-way / with
mutual CHAP, digests, a full-disk write and read verified against the backing file,
UNMAP on a thin LUN, one-line errors for bad input, and the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tgtd_helpers import Tgtd, fill

from blockyard.errors import BlockError, MediaError, NotFoundError
from blockyard.transport.iscsi_initiator import discover, open_remote, probe

pytestmark = pytest.mark.interop
PLAIN = "iqn.2026-11.org.blockyard.test:plain"
CHAP = "iqn.2026-11.org.blockyard.test:chap"
MUTUAL = "iqn.2026-11.org.blockyard.test:mutual"
MiB = 1 << 20
SIZE = 32 * MiB


@pytest.fixture
def tgtd(tmp_path: Path, require_tool: Callable[[str], str]) -> Iterator[Tgtd]:
    require_tool("tgtd")
    require_tool("tgtadm")
    daemon = Tgtd(tmp_path).start()
    try:
        for tid, name in ((1, PLAIN), (2, CHAP), (3, MUTUAL)):
            path = tmp_path / f"lun{tid}.img"
            fill(path, SIZE, seed=tid)
            daemon.add_target(tid, name, {1: path}, thin=tid == 1,
                              chap=("alice", "alice-secret") if tid > 1 else None,
                              mutual=("tgt", "target-secret") if tid == 3 else None)
        for key in ("HeaderDigest", "DataDigest"):  # tgtd answers with its own list
            daemon.set_param(2, key, "CRC32C,None")
        yield daemon
    finally:
        daemon.stop()


async def test_discovery_lists_every_target(tgtd: Tgtd) -> None:
    found = dict(await discover(f"127.0.0.1:{tgtd.port}"))
    assert set(found) == {PLAIN, CHAP, MUTUAL}
    assert found[PLAIN] == [f"127.0.0.1:{tgtd.port},1"]


async def test_probe_plain_lun(tgtd: Tgtd) -> None:
    info = await probe(tgtd.url(PLAIN, 1))
    assert (info["vendor"], info["size"], info["block_size"]) == ("IET", SIZE, 512)
    assert info["thin"] and info["unmap"] and info["identity"].startswith("naa.")
    assert info["negotiated"]["AuthMethod"] == "None"


async def test_chap_one_way(tgtd: Tgtd) -> None:
    info = await probe(tgtd.url(CHAP, 1, "alice%alice-secret"))
    assert info["negotiated"]["AuthMethod"] == "CHAP"


@pytest.mark.parametrize("user", ["alice%wrong-secret", "", "mallory%alice-secret"])
async def test_chap_refused(tgtd: Tgtd, user: str) -> None:
    with pytest.raises(MediaError) as info:
        await probe(tgtd.url(CHAP, 1, user))
    message = str(info.value)
    assert "login failed: authentication failure (0x0201)" in message
    assert "secret" not in message and "\n" not in message


async def test_mutual_chap(tgtd: Tgtd) -> None:
    url = tgtd.url(MUTUAL, 1, "alice%alice-secret", "target_user=tgt&target_password=")
    info = await probe(url + "target-secret")
    assert info["negotiated"]["AuthMethod"] == "CHAP"
    with pytest.raises(MediaError, match="invalid mutual CHAP response from the target"):
        await probe(url + "not-the-target-secret")


async def test_digests_both_crc32c(tgtd: Tgtd, tmp_path: Path) -> None:
    url = tgtd.url(CHAP, 1, "alice%alice-secret", "header_digest=crc32c&data_digest=crc32c")
    lun = await open_remote(url)
    try:
        keys = lun.props.negotiated
        assert keys["HeaderDigest"] == "CRC32C" and keys["DataDigest"] == "CRC32C"
        data = os.urandom(3 * MiB)
        await lun.pwrite(5 * MiB + 512, data)
        assert bytes(await lun.pread(5 * MiB + 512, len(data))) == data
    finally:
        await lun.close()
    assert (tmp_path / "lun2.img").read_bytes()[5 * MiB + 512:8 * MiB + 512] == data


async def test_digest_the_target_will_not_do(tgtd: Tgtd) -> None:
    with pytest.raises(MediaError, match="illegal answer HeaderDigest=None to offer CRC32C"):
        await open_remote(tgtd.url(PLAIN, 1, query="header_digest=crc32c"))


async def test_full_disk_write_and_read(tgtd: Tgtd, tmp_path: Path) -> None:
    lun = await open_remote(tgtd.url(CHAP, 1, "alice%alice-secret"))
    new = os.urandom(SIZE)
    sem = asyncio.Semaphore(16)

    async def put(off: int) -> None:
        async with sem:
            await lun.pwrite(off, memoryview(new)[off:off + MiB])

    try:
        await asyncio.gather(*(put(off) for off in range(0, SIZE, MiB)))
        await lun.flush()
        assert (tmp_path / "lun2.img").read_bytes() == new
        back = await asyncio.gather(*(lun.pread(off, 4 * MiB) for off in range(0, SIZE, 4 * MiB)))
        assert b"".join(bytes(b) for b in back) == new
    finally:
        await lun.close()


async def test_unmap_on_thin_lun(tgtd: Tgtd, tmp_path: Path) -> None:
    path = tmp_path / "lun1.img"
    before = os.stat(path).st_blocks
    lun = await open_remote(tgtd.url(PLAIN, 1))
    try:
        assert lun.can_trim and lun.can_extents
        await lun.trim(4 * MiB, 8 * MiB)
        assert bytes(await lun.pread(4 * MiB, 8 * MiB)) == bytes(8 * MiB)
        extents = await lun.extents(4 * MiB, 8 * MiB)
        assert extents[0].flags & 1 and extents[0].length == 8 * MiB
        await lun.zero(16 * MiB, MiB, may_trim=True)
        assert bytes(await lun.pread(16 * MiB, MiB)) == bytes(MiB)
    finally:
        await lun.close()
    assert os.stat(path).st_blocks <= before - (8 * MiB) // 512


async def test_bad_input_gives_one_line_errors(tgtd: Tgtd) -> None:
    with pytest.raises(NotFoundError, match=r"LUN 7 does not exist"):
        await open_remote(tgtd.url(PLAIN, 7))
    with pytest.raises(NotFoundError, match=r"login failed: target not found \(0x0203\)"):
        await open_remote(tgtd.url(PLAIN + "-nope", 1))
    port = tgtd.port
    tgtd.stop()
    with pytest.raises(MediaError, match=rf"127.0.0.1:{port}/.*: cannot connect: Connection "
                                         "refused"):
        await open_remote(f"iscsi://127.0.0.1:{port}/{PLAIN}/1")


async def test_io_error_after_reconnect_bound(tgtd: Tgtd) -> None:
    lun = await open_remote(tgtd.url(PLAIN, 1, query="reconnect=1"))
    try:
        tgtd.stop()  # drops the session, then the daemon goes away
        with pytest.raises(BlockError) as info:
            await lun.pread(0, MiB)
        assert "session lost" in str(info.value) and "reconnecting failed for 1 s" in str(
            info.value)
    finally:
        await lun.close()


def test_cli_discover_and_probe(tgtd: Tgtd) -> None:
    run = [sys.executable, "-m", "blockyard", "iscsi"]
    out = subprocess.run(run + ["discover", f"127.0.0.1:{tgtd.port}"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and PLAIN in out.stdout and CHAP in out.stdout
    env = dict(os.environ, BLOCKYARD_ISCSI_SECRET="alice-secret")
    out = subprocess.run(run + ["probe", tgtd.url(CHAP, 1, "alice")], capture_output=True,
                         text=True, timeout=30, env=env)
    assert out.returncode == 0 and "AuthMethod" in out.stdout and "32M" in out.stdout
    bad = subprocess.run(run + ["probe", tgtd.url(CHAP, 1, "alice%nope")], capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 4 and bad.stderr.count("\n") == 1
    assert "authentication failure" in bad.stderr and "nope" not in bad.stderr
