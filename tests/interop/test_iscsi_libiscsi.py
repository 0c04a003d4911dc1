"""libiscsi's command-line tools (Debian libiscsi-bin) against our target, in process,
with the real SCSI layer over sparse raw files: iscsi-inq, iscsi-ls (with and
without CHAP, mutual CHAP, ACL filtering), iscsi-readcapacity16, header
digests, and a brief iscsi-perf."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from blockyard.block.raw import RawFile
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskOptions, DiskUnit
from blockyard.transport.iscsi_target import IscsiTarget, IscsiTargetServer

pytestmark = pytest.mark.interop

PREFIX = "iqn.2026-11.org.blockyard:"
USER, SECRET = "alice", "alice-secret-12"
TUSER, TSECRET = "target-user", "target-secret-34"
MiB = 1 << 20


def disk(path: Path, size: int, **opts: object) -> ScsiTargetDevice:
    with open(path, "wb") as f:
        f.truncate(size)
    return ScsiTargetDevice({0: DiskUnit(RawFile(path), DiskOptions(**opts))})  # type: ignore[arg-type]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[IscsiTargetServer]:
    targets = [
        IscsiTarget(PREFIX + "open", disk(tmp_path / "open.img", 64 * MiB)),
        IscsiTarget(PREFIX + "chap", disk(tmp_path / "chap.img", 16 * MiB),
                    chap=(USER, SECRET)),
        IscsiTarget(PREFIX + "mutual", disk(tmp_path / "mutual.img", 16 * MiB),
                    chap=(USER, SECRET), mutual_chap=(TUSER, TSECRET)),
        IscsiTarget(PREFIX + "hidden", disk(tmp_path / "hidden.img", 16 * MiB),
                    acl=["iqn.2026-11.org.blockyard:somebody-else"]),
    ]
    srv = IscsiTargetServer(targets, nop_interval=0)
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop(grace=1.0)


async def run(*argv: str, timeout: float = 30) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()  # our own child, by its handle
        await proc.wait()
        raise
    return int(proc.returncode or 0), out.decode(errors="replace")


def url(srv: IscsiTargetServer, target: str, creds: str = "", query: str = "") -> str:
    auth = f"{creds}@" if creds else ""
    return f"iscsi://{auth}127.0.0.1:{srv.port}/{PREFIX}{target}/0{query}"


@pytest.mark.peers("iscsi-inq")
async def test_iscsi_inq(server: IscsiTargetServer) -> None:
    rc, out = await run("iscsi-inq", url(server, "open"))
    assert rc == 0, out
    assert "Peripheral Device Type:DIRECT_ACCESS" in out and "Vendor:BLOCKYRD" in out


@pytest.mark.peers("iscsi-inq")
async def test_iscsi_inq_vpd_serial(server: IscsiTargetServer) -> None:
    rc, out = await run("iscsi-inq", "-e", "1", "-c", "0x80", url(server, "open"))
    assert rc == 0, out


@pytest.mark.peers("iscsi-inq", "iscsi-readcapacity16")
async def test_header_digest_crc32c(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """libiscsi's tools offer HeaderDigest=None,CRC32C; a target that insists gets CRC32C."""
    caplog.set_level(logging.DEBUG, logger="blockyard.iscsi")
    srv = IscsiTargetServer([IscsiTarget(PREFIX + "open", disk(tmp_path / "d.img", MiB))],
                            nop_interval=0, header_digests=("CRC32C",))
    await srv.start("127.0.0.1", 0)
    try:
        for tool in ("iscsi-inq", "iscsi-readcapacity16"):
            rc, out = await run(tool, url(srv, "open"))
            assert rc == 0, out
    finally:
        await srv.stop(grace=1.0)
    logins = [r.getMessage() for r in caplog.records if "logged in" in r.getMessage()]
    assert len(logins) == 2 and all("HeaderDigest=CRC32C" in m for m in logins)


@pytest.mark.peers("iscsi-readcapacity16")
async def test_iscsi_readcapacity16(server: IscsiTargetServer) -> None:
    rc, out = await run("iscsi-readcapacity16", url(server, "open"))
    assert rc == 0, out
    assert "Total size:67108864" in out and "LOGICAL BLOCK LENGTH IN BYTES:512" in out


@pytest.mark.peers("iscsi-ls")
async def test_iscsi_ls_without_chap(server: IscsiTargetServer) -> None:
    rc, out = await run("iscsi-ls", f"iscsi://127.0.0.1:{server.port}")
    targets = re.findall(r"Target:(\S+) Portal:(\S+)", out)
    assert rc == 0, out
    assert sorted(t for t, _ in targets) == [PREFIX + "chap", PREFIX + "mutual", PREFIX + "open"]
    assert all(p == f"127.0.0.1:{server.port},1" for _, p in targets)  # the ACL hides "hidden"
    rc, out = await run("iscsi-ls", "-s", f"iscsi://127.0.0.1:{server.port}")
    assert rc != 0 and "Authentication failure" in out  # a CHAP target refuses the login


@pytest.mark.peers("iscsi-ls")
async def test_iscsi_ls_with_chap(server: IscsiTargetServer) -> None:
    rc, out = await run("iscsi-ls", "-s", f"iscsi://{USER}%{SECRET}@127.0.0.1:{server.port}")
    luns = re.findall(r"Target:(\S+).*\nLun:0\s+Type:DIRECT_ACCESS \(Size:(\d+)M\)", out)
    assert rc == 0, out
    assert sorted(luns) == [(PREFIX + "chap", "15"), (PREFIX + "mutual", "15"),
                            (PREFIX + "open", "63")], out  # iscsi-ls rounds the last LBA down


@pytest.mark.peers("iscsi-inq")
async def test_one_way_chap(server: IscsiTargetServer) -> None:
    rc, out = await run("iscsi-inq", url(server, "chap", f"{USER}%{SECRET}"))
    assert rc == 0, out
    rc, out = await run("iscsi-inq", url(server, "chap", f"{USER}%wrong-secret"))
    assert rc != 0 and "Authentication failure(513)" in out
    rc, out = await run("iscsi-inq", url(server, "chap"))
    assert rc != 0 and "Authentication failure(513)" in out


@pytest.mark.peers("iscsi-inq")
async def test_mutual_chap(server: IscsiTargetServer) -> None:
    good = f"?target_user={TUSER}&target_password={TSECRET}"
    rc, out = await run("iscsi-inq", url(server, "mutual", f"{USER}%{SECRET}", good))
    assert rc == 0, out
    bad = f"?target_user={TUSER}&target_password=not-the-target-secret"
    rc, out = await run("iscsi-inq", url(server, "mutual", f"{USER}%{SECRET}", bad))
    assert rc != 0 and "Invalid CHAP_R response from the target" in out


@pytest.mark.peers("iscsi-inq")
async def test_acl_refuses_a_login(server: IscsiTargetServer) -> None:
    rc, out = await run("iscsi-inq", url(server, "hidden"))
    assert rc != 0 and "Authorization failure(514)" in out


@pytest.mark.peers("iscsi-perf")
@pytest.mark.parametrize(("blocks", "depth", "extra"), [(8, 32, ["-r"]), (2048, 4, [])])
async def test_iscsi_perf_briefly(server: IscsiTargetServer, blocks: int, depth: int,
                                  extra: list[str]) -> None:
    rc, out = await run("iscsi-perf", "-t", "1", "-b", str(blocks), "-m", str(depth), *extra,
                        url(server, "open"), timeout=30)
    averages = re.findall(r"iops average (\d+)", out.replace("\r", "\n"))
    assert rc == 0 and averages and int(averages[-1]) > 0, out
