"""The re-exported medium: a tgtd LUN opened with ``open_remote`` and served over NBD
(our NbdServer, in process) to fio's nbd engine, which writes and verifies crc32c
while tgtd drops our iSCSI connection three times.  fio must see no error at all:
every drop is covered by the reconnect.  (``blockyard serve iscsi://...`` will do the
same wiring; until the lead adds it this builds the export directly.)"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tgtd_helpers import Tgtd

from blockyard.transport.iscsi_initiator import open_remote
from blockyard.transport.nbd_server import Export, ExportTable, NbdServer

pytestmark = pytest.mark.interop
IQN = "iqn.2026-11.org.blockyard.test:reexport"
MiB = 1 << 20
SIZE = 48 * MiB


@pytest.fixture
def tgtd(tmp_path: Path, require_tool: Callable[[str], str]) -> Iterator[Tgtd]:
    require_tool("tgtd")
    require_tool("tgtadm")
    require_tool("fio")
    daemon = Tgtd(tmp_path).start()
    try:
        with open(tmp_path / "lun.img", "wb") as f:
            f.truncate(SIZE)
        daemon.add_target(1, IQN, {1: tmp_path / "lun.img"})
        yield daemon
    finally:
        daemon.stop()


async def _dropper(tgtd: Tgtd, fio: asyncio.subprocess.Process, drops: list[int]) -> None:
    """Three drops, each once a session is up again and has run for a while."""
    loop = asyncio.get_running_loop()
    while len(drops) < 3 and fio.returncode is None:
        await asyncio.sleep(0.8)
        if fio.returncode is None and await loop.run_in_executor(None, tgtd.connections, 1):
            drops.append(await loop.run_in_executor(None, tgtd.drop_connections, 1))


async def test_fio_over_nbd_survives_iscsi_drops(tgtd: Tgtd, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="blockyard.iscsi.initiator")
    lun = await open_remote(tgtd.url(IQN, 1))
    server = NbdServer(ExportTable([Export("remote", lun)]))
    _, port = await server.listen("127.0.0.1", 0)
    out = tmp_path / "fio.json"
    fio = await asyncio.create_subprocess_exec(
        "fio", "--name=reexport", "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{port}/remote",
        f"--size={SIZE}", "--rw=randwrite", "--bsrange=4k-256k", "--bs_unaligned=0",
        "--iodepth=16", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0",
        "--rate=12m", "--output-format=json", f"--output={out}", cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    drops: list[int] = []
    try:
        dropper = asyncio.ensure_future(_dropper(tgtd, fio, drops))
        _, stderr = await asyncio.wait_for(fio.communicate(), 180)
        await dropper
    finally:
        await server.stop(grace=1)
        await lun.close()
    assert fio.returncode == 0, stderr.decode()
    job = json.loads(out.read_text())["jobs"][0]
    assert job["error"] == 0 and job["write"]["io_bytes"] >= SIZE
    assert job["read"]["io_bytes"] >= SIZE  # the verify pass read everything back
    assert len(drops) >= 2 and all(n >= 1 for n in drops), drops  # each hit a live session
    assert caplog.text.count("reconnected: session reinstated") >= len(drops)
