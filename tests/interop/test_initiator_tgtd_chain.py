"""Chains over a remote base: Debian's tgtd (private, own control socket and port,
stopped by PID) exports a LUN with CHAP; blockyard puts local differencing images
over it and the LUN is never written.

* the registry daemon: the LUN registered as an ``immutable`` medium, attached and
  served over NBD to two libnbd clients (127.0.0.1 and 127.0.0.2), each with its own
  differencing VDI under STATE/diffs; the CHAP secret only ever in the daemon's
  environment (``BLOCKYARD_ISCSI_SECRET``), never in the registry or a diff;
* quick mode: ``blockyard medium create child.vdi --parent iscsi://...?secret_env=``
  then ``blockyard serve child.vdi``; fio's nbd engine writes and verifies, the flat
  clone equals what NBD serves, the child's block map passes ``qemu-img check``;
* tgtd drops the iSCSI connection while a client reads through the child: the
  initiator reconnects and the client never sees an error.

The LUN's backing file has a known sha256 before and the same one after.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nbd_helpers import NbdServerProc, run, sha256_file, start_server
from tgtd_helpers import Tgtd, fill

sys.path.append(str(Path(__file__).resolve().parents[1] / "integration"))
from test_cli_registry_support import ENV, cli, cli_json  # noqa: E402
from test_daemon_iscsi_support import Daemon  # noqa: E402

pytestmark = pytest.mark.interop
IQN = "iqn.2026-11.org.blockyard.test:chainbase"
USER = "chainuser"
SECRET = "Chain-Base-S3cret-4711"  # 12..16+ characters: tgtd wants CHAP secrets >= 12
MiB = 1 << 20
SIZE = 16 * MiB
VDI_BLOCK = MiB

DAEMON_CONFIG = """\
[nbd]
listen = ["127.0.0.1:0"]

[[controller]]
name = "san"
type = "sas"
"""


@pytest.fixture
def tgtd(tmp_path: Path, require_tool: Callable[[str], str]) -> Iterator[Tgtd]:
    """tgtd with one CHAP-protected LUN over ``lun.img`` (random data, zero MiBs)."""
    require_tool("tgtd")
    require_tool("tgtadm")
    daemon = Tgtd(tmp_path).start()
    try:
        fill(tmp_path / "lun.img", SIZE, seed=4711)
        daemon.add_target(1, IQN, {1: tmp_path / "lun.img"}, chap=(USER, SECRET))
        yield daemon
    finally:
        daemon.stop()


def _connect(nbd: Any, port: int, source: str, name: str) -> Any:
    """A libnbd handle whose TCP connection comes from ``source`` (a client identity)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_socket(sock.detach())
    return h


def _read_all(h: Any, size: int = SIZE) -> bytes:
    return b"".join(bytes(h.pread(4 * MiB, off)) for off in range(0, size, 4 * MiB))


def _apply(model: bytearray, off: int, data: bytes) -> None:
    model[off:off + len(data)] = data


# ---- 1. the check -----------------------------------------------------------


def test_immutable_lun_served_to_two_clients_is_never_written(
        tgtd: Tgtd, tmp_path: Path, nbd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain over a remote base: an immutable medium over an iSCSI LUN served over
    NBD to two clients; the LUN is never written."""
    lun_file = tmp_path / "lun.img"
    lun_data = lun_file.read_bytes()
    before = hashlib.sha256(lun_data).hexdigest()
    # the secret reaches the daemon (and any CLI run) only through the environment
    monkeypatch.setitem(ENV, "BLOCKYARD_ISCSI_SECRET", SECRET)
    url = tgtd.url(IQN, 1, USER)
    assert SECRET not in url
    d = Daemon.start(tmp_path, DAEMON_CONFIG)
    stopped = False
    try:
        m = cli_json(d.state, "medium", "add", url, "--type", "immutable")
        assert (m["format"], m["location"], m["virtual_size"]) == ("iscsi", url, SIZE)
        assert m["write_mode"] == "immutable"
        cli(d.state, "attach", "san", "--port", "0", "--medium", m["uuid"], "--name", "chain")

        a = _connect(nbd, d.nbd_port, "127.0.0.1", "chain")
        b = _connect(nbd, d.nbd_port, "127.0.0.2", "chain")
        assert not a.is_read_only() and not b.is_read_only()
        rnd = random.Random(99)
        want_a, want_b = bytearray(lun_data), bytearray(lun_data)
        writes = [  # (handle, model, offset, length): unaligned, across 1 MiB VDI blocks
            (a, want_a, VDI_BLOCK - 1000, 5000),
            (b, want_b, VDI_BLOCK - 3001, 7003),  # over A's range: B must not see A's
            (a, want_a, 3 * VDI_BLOCK + 123, 2 * VDI_BLOCK + 777),  # a zero MiB, then data
            (b, want_b, 6 * VDI_BLOCK - 1, 2),  # two bytes, one in each block
            (b, want_b, 7 * VDI_BLOCK + 100, VDI_BLOCK + VDI_BLOCK // 2),
            (a, want_a, SIZE - 4096 - 7, 4096 + 7),  # up to the very end
            (b, want_b, 0, 513),
        ]
        for h, model, off, length in writes:
            data = rnd.randbytes(length)
            h.pwrite(data, off)
            _apply(model, off, data)
        assert b.can_zero()  # zeroes over the LUN's data must not fall through to it
        b.zero(VDI_BLOCK + 4096, 9 * VDI_BLOCK - 17)
        _apply(want_b, 9 * VDI_BLOCK - 17, bytes(VDI_BLOCK + 4096))
        for h, model, who in ((a, want_a, "A"), (b, want_b, "B")):
            got = _read_all(h)
            assert got == bytes(model), f"client {who} reads wrong data at " \
                f"{next(i for i in range(SIZE) if got[i] != model[i])}"
        assert want_a != want_b and want_a != lun_data  # the check above is not vacuous
        for h in (a, b):
            h.flush()
            h.shutdown()

        diffs = sorted((d.state / "diffs").iterdir())
        assert [p.name.split("--")[1] for p in diffs] == ["127.0.0.1.vdi", "127.0.0.2.vdi"]
        stopped = True
        assert d.stop() == 0, d.log()
    finally:
        if not stopped:
            d.stop()

    assert sha256_file(lun_file) == before, "the LUN was written"
    hint = f"blockyard-parent: {url}".encode()  # each diff names the LUN, without secrets
    for p in diffs:
        raw = p.read_bytes()
        assert hint in raw, p
        assert SECRET.encode() not in raw, p
    dbs = list(d.state.glob("registry.sqlite*"))
    assert dbs
    for db in dbs:  # the database and its WAL / journal
        assert SECRET.encode() not in db.read_bytes(), db
    assert SECRET not in d.log()


# ---- 2. quick mode: a child file over the LUN ---------------------------------------


def _quick_child(tgtd: Tgtd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``blockyard medium create child.vdi --parent iscsi://...?secret_env=...``."""
    monkeypatch.setenv("CHAIN_TEST_CHAP", SECRET)  # what the subprocesses inherit
    monkeypatch.setenv("BLOCKYARD_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("BLOCKYARD_ISCSI_SECRET", raising=False)
    url = tgtd.url(IQN, 1, USER, "secret_env=CHAIN_TEST_CHAP")
    child = tmp_path / "child.vdi"
    out = run([sys.executable, "-m", "blockyard", "medium", "create", str(child),
               "--parent", url], timeout=60)
    assert "differencing image" in out.stdout and SECRET not in out.stdout + out.stderr
    assert f"blockyard-parent: {url}".encode() in child.read_bytes()
    assert SECRET.encode() not in child.read_bytes()
    return child


def _qemu_check_vdi_map(child: Path, tmp_path: Path) -> None:
    """``qemu-img check`` of the child's header and block map.

    QEMU opens no differencing VDI ("unsupported VDI image (non-NULL link UUID)"),
    so a copy has the image type set to dynamic and the link and parent UUIDs
    cleared (VDI 1.1 header: type at 0x4c, link UUID 0x1a8, parent UUID 0x1b8); the
    block map, the allocated count and the offsets are the child's own.
    """
    raw = bytearray(child.read_bytes())
    assert int.from_bytes(raw[0x4C:0x50], "little") == 4  # VDI_IMAGE_TYPE_DIFF
    raw[0x4C:0x50] = (1).to_bytes(4, "little")
    raw[0x1A8:0x1C8] = bytes(32)
    copy = tmp_path / "child-map-check.vdi"
    copy.write_bytes(raw)
    out = run(["qemu-img", "check", "-f", "vdi", "--output=json", str(copy)], check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
    assert report["check-errors"] == 0, report


@pytest.mark.peers("fio", "qemu-img")
def test_quick_mode_child_over_lun_fio_verify(
        tgtd: Tgtd, tmp_path: Path, nbd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    lun_file = tmp_path / "lun.img"
    lun_data = lun_file.read_bytes()
    before = sha256_file(lun_file)
    child = _quick_child(tgtd, tmp_path, monkeypatch)
    server = start_server([child], tmp_path)
    try:
        uri = server.uri("child")
        off, length = 3 * MiB + 512, 5 * MiB  # not on a VDI block boundary
        report_path = tmp_path / "fio.json"
        fio = run(["fio", "--name=chain", "--ioengine=nbd", f"--uri={uri}",
                   f"--offset={off}", f"--size={length}", "--rw=randwrite",
                   "--bsrange=512-192k", "--bs_unaligned=1", "--iodepth=8",
                   "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0",
                   "--output-format=json", f"--output={report_path}"],
                  timeout=120, check=False, cwd=tmp_path)
        assert fio.returncode == 0, fio.stdout + fio.stderr
        [job] = json.loads(report_path.read_text())["jobs"]
        assert job["error"] == 0, job
        written = job["write"]["io_bytes"]  # random sizes: the last one may not fit
        assert written > length - 192 * 1024 and job["read"]["io_bytes"] >= written

        h = nbd.NBD()
        h.connect_uri(uri)
        try:
            served = _read_all(h)
            h.flush()  # fio's nbd engine does not: the child's map reaches its file
        finally:
            h.shutdown()
        # outside fio's range the LUN shows through; inside, fio's (verified) data
        assert served[:off] == lun_data[:off]
        assert served[off + length:] == lun_data[off + length:]
        assert served[off:off + length] != lun_data[off:off + length]

        flat = tmp_path / "flat.raw"
        run([sys.executable, "-m", "blockyard", "medium", "clone", str(child), str(flat),
             "--format", "raw"], timeout=60)
        assert flat.stat().st_size == SIZE
        assert flat.read_bytes() == served
        cmp = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", uri, str(flat)],
                  check=False)
        assert cmp.returncode == 0 and "identical" in cmp.stdout.lower(), \
            cmp.stdout + cmp.stderr
    finally:
        server.stop(check=True)
    assert SECRET not in server.log()
    assert sha256_file(lun_file) == before, "the LUN was written"
    checked = run([sys.executable, "-m", "blockyard", "medium", "check", str(child)],
                  timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    _qemu_check_vdi_map(child, tmp_path)


# ---- 3. tgtd drops the session under a reading client -------------------------------


def _reader(server: NbdServerProc, nbd: Any, want: bytes, stop: threading.Event,
            rounds: list[int], errors: list[BaseException]) -> None:
    try:
        h = nbd.NBD()
        h.connect_uri(server.uri("child"))
        try:
            while not stop.is_set():
                got = _read_all(h)
                if got != want:
                    raise AssertionError("the client read wrong data through the child")
                rounds.append(1)
        finally:
            h.shutdown()
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def test_reads_through_child_survive_iscsi_drops(
        tgtd: Tgtd, tmp_path: Path, nbd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    lun_file = tmp_path / "lun.img"
    want = bytearray(lun_file.read_bytes())
    before = sha256_file(lun_file)
    child = _quick_child(tgtd, tmp_path, monkeypatch)
    server = start_server([child], tmp_path)  # --log-level warning: reconnects show
    try:
        h = nbd.NBD()
        h.connect_uri(server.uri("child"))
        data = os.urandom(MiB + 4096)
        h.pwrite(data, 5 * MiB - 2048)  # some of the child is its own
        _apply(want, 5 * MiB - 2048, data)
        h.flush()
        h.shutdown()

        stop = threading.Event()
        rounds: list[int] = []
        errors: list[BaseException] = []
        reader = threading.Thread(target=_reader,
                                  args=(server, nbd, bytes(want), stop, rounds, errors))
        reader.start()
        drops: list[int] = []
        try:
            deadline = time.monotonic() + 40
            while len(drops) < 3 and time.monotonic() < deadline and not errors:
                time.sleep(0.4)
                if tgtd.connections(1):  # a session is up (again): drop it mid-read
                    drops.append(tgtd.drop_connections(1))
            seen = len(rounds)
            while len(rounds) < seen + 2 and time.monotonic() < deadline and not errors:
                time.sleep(0.05)  # whole reads after the last drop, too
        finally:
            stop.set()
            reader.join(60)
        assert not reader.is_alive()
        assert not errors, errors
        assert len(drops) == 3 and all(n >= 1 for n in drops), drops
        assert len(rounds) >= 2
    finally:
        server.stop(check=True)
    log = server.log()
    assert log.count("reconnected: session reinstated") >= 3, log
    assert SECRET not in log
    assert sha256_file(lun_file) == before, "the LUN was written"
