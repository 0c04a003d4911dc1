"""Snapshots of a registered remote iSCSI LUN (write mode normal): take, restore, list and
delete online (attached in the daemon, one libnbd client connected throughout) and
offline (no daemon: the CLI opens the registry; the current state is written through
quick mode and its opener, which find the chain from the files down to the LUN).  The images live
under STATE/remote/<LUN uuid>/Snapshots/; deleting the first snapshot merges its child
into the LUN, whose backing file then holds exactly the merged state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from remote_parent_support import (
    DAEMON_CONFIG,
    MiB,
    QuickNbd,
    Target,
    image_check,
    patched,
    random_file,
    run,
    wait_no_sessions,
)
from test_cli_registry_support import cli, cli_json, connect
from test_daemon_iscsi_support import Daemon

from blockyard.media.remote_chain import open_path

nbd = pytest.importorskip("nbd")
SIZE = 8 * MiB
CONFIG = DAEMON_CONFIG


def _w(*spans: tuple[int, int]) -> dict[int, bytes]:
    """Random writes at (offset, length) in 512-byte sectors (the LUN's logical block,
    its NBD minimum block size), most of them across a 1 MiB VDI block boundary."""
    return {off * 512: os.urandom(n * 512) for off, n in spans}


S = MiB // 512  # sectors per VDI block
X0 = _w((S - 3, 8))
X1 = _w((S - 1, 2), (4 * S + 17, S))
X2 = _w((4 * S - 9, 10), (7 * S, 8))
X3 = _w((2 * S + 1, 3 * S))
X4 = _w((6 * S - 1, 2), (8 * S - 1, 1))


def _snaps(state: Path, lun: str) -> Any:
    return cli_json(state, "snapshot", "list", lun)


def _folder(state: Path, uuid: str) -> Path:
    return state / "remote" / uuid / "Snapshots"


def _images(state: Path, uuid: str) -> list[Path]:
    folder = _folder(state, uuid)
    return sorted(folder.iterdir()) if folder.exists() else []


def _check_all(state: Path, uuid: str, count: int) -> None:
    """Exactly ``count`` snapshot images, each a sound VDI."""
    images = _images(state, uuid)
    assert len(images) == count, images
    for p in images:
        assert p.suffix == ".vdi"
        image_check(p)


def test_snapshots_of_a_served_lun(tmp_path: Path) -> None:
    lun = tmp_path / "lun.img"
    data = random_file(lun, SIZE)
    target = Target.start(lun)
    d = Daemon.start(tmp_path, CONFIG)
    try:
        m = cli_json(d.state, "medium", "add", target.url)
        uid, state = m["uuid"], d.state
        cli(state, "attach", "net", "--port", "0", "--medium", uid, "--name", "lun")
        h = connect(d.nbd_port, "lun")

        def write(w: dict[int, bytes]) -> None:
            for off, chunk in w.items():
                h.pwrite(chunk, off)
            h.flush()

        write(X0)  # normal mode: straight into the LUN
        at_first = patched(data, X0)
        assert lun.read_bytes() == at_first
        first = cli_json(state, "snapshot", "take", uid, "--name", "first")
        assert first["frozen"] == target.url
        assert Path(first["current"]).parent == _folder(state, uid)
        write(X1)
        assert lun.read_bytes() == at_first  # the LUN is frozen now
        second = cli_json(state, "snapshot", "take", uid, "--name", "second")
        assert second["frozen"] == first["current"]
        write(X2)
        assert h.pread(SIZE, 0) == patched(at_first, X1, X2)
        cli(state, "snapshot", "restore", uid, "first")
        assert h.pread(SIZE, 0) == at_first  # the same session, swapped under it
        assert not Path(second["current"]).exists()  # the discarded state
        write(X3)
        listing = _snaps(state, uid)
        assert [s["name"] for s in listing["snapshots"]] == ["first", "second"]
        current = Path(listing["current_state"]["location"])
        assert current.parent == _folder(state, uid)
        _check_all(state, uid, 2)  # second's frozen image and the current state
        cli(state, "snapshot", "delete", uid, "second")  # its image had no child left
        assert not Path(first["current"]).exists()
        assert h.pread(SIZE, 0) == patched(at_first, X3)
        cli(state, "snapshot", "delete", uid, "first")  # merges the current state down
        merged = patched(at_first, X3)
        assert lun.read_bytes() == merged  # into the LUN, through iSCSI
        assert h.pread(SIZE, 0) == merged
        assert _images(state, uid) == [] and not current.exists()
        listing = _snaps(state, uid)
        assert listing["snapshots"] == [] and listing["current_state"]["uuid"] == uid
        write(X4)  # the LUN is the current state again
        merged = patched(merged, X4)
        assert lun.read_bytes() == merged
        # the current state attached anew: the daemon logs into the LUN as the chain's
        # read-only base; the online merge must still write it
        third = cli_json(state, "snapshot", "take", uid, "--name", "third")
        h.shutdown()
        wait_no_sessions(state, "lun")
        cli(state, "detach", "net", "--port", "0")
        cli(state, "attach", "net", "--port", "0", "--medium", third["current"], "--name", "lun")
        h = connect(d.nbd_port, "lun")
        assert h.pread(SIZE, 0) == merged
        write(X1)
        assert lun.read_bytes() == merged
        cli(state, "snapshot", "delete", uid, "third")
        assert lun.read_bytes() == patched(merged, X1)
        assert _images(state, uid) == [] and not Path(third["current"]).exists()
        h.shutdown()
        wait_no_sessions(state, "lun")
        cli(state, "detach", "net", "--port", "0")
    finally:
        try:
            assert d.stop() == 0
        finally:
            target.stop()
    assert " ERROR " not in d.log() and "Traceback" not in d.log(), d.log()


def _quick(tmp: Path, path: str | Path, expect: bytes, writes: dict[int, bytes]) -> None:
    """The current state served by quick mode, which finds its chain from the files
    down to the LUN: it reads ``expect``; after ``writes`` (flushed), with them."""
    server = QuickNbd.start(Path(path), "--name", "disk", log_dir=tmp)
    try:
        h = server.connect("disk")
        assert h.pread(SIZE, 0) == expect
        for off, chunk in writes.items():
            h.pwrite(chunk, off)
        h.flush()
        assert h.pread(SIZE, 0) == patched(expect, writes)
        h.shutdown()
    finally:
        server.stop()


async def _files(path: str | Path, expect: bytes,
                 writes: dict[int, bytes] | None = None) -> None:
    """``_quick`` in this process (the same opener, ``remote_chain.open_path``), faster."""
    layer = await open_path(str(path))
    try:
        assert bytes(await layer.pread(0, SIZE)) == expect
        for off, chunk in (writes or {}).items():
            await layer.pwrite(off, chunk)
        await layer.flush()
        assert bytes(await layer.pread(0, SIZE)) == patched(expect, writes or {})
    finally:
        await layer.close()


async def test_snapshots_of_a_lun_offline(tmp_path: Path) -> None:
    lun, state = tmp_path / "lun.img", tmp_path / "state"
    data = random_file(lun, SIZE)
    target = Target.start(lun)
    try:
        m = cli_json(state, "medium", "add", target.url)
        uid = m["uuid"]
        first = cli_json(state, "snapshot", "take", uid, "--name", "first")
        assert first["frozen"] == target.url
        _quick(tmp_path, first["current"], data, X1)
        second = cli_json(state, "snapshot", "take", uid, "--name", "second")
        await _files(second["current"], patched(data, X1), X2)
        assert lun.read_bytes() == data
        cli(state, "snapshot", "restore", uid, "first")
        current = _snaps(state, uid)["current_state"]["location"]
        assert not Path(second["current"]).exists()
        await _files(current, data, X3)  # as at the first snapshot
        cli(state, "snapshot", "restore", uid, "second")
        assert not Path(current).exists()  # X3's state is discarded
        current = _snaps(state, uid)["current_state"]["location"]
        await _files(current, patched(data, X1))
        _check_all(state, uid, 2)
        assert lun.read_bytes() == data
        # the LUN has one child (second's frozen image): it is merged into the LUN, and
        # the current state is relinked onto the LUN
        cli(state, "snapshot", "delete", uid, "first")
        assert lun.read_bytes() == patched(data, X1)
        assert not Path(first["current"]).exists()
        r = run("medium", "info", current, "--json")
        assert f'"parent_uuid": "{uid}"' in r.stdout and target.url in r.stdout, r.stdout
        _check_all(state, uid, 1)
        await _files(current, patched(data, X1), X4)
        listing = _snaps(state, uid)
        assert [s["name"] for s in listing["snapshots"]] == ["second"]
        cli(state, "snapshot", "delete", uid, "second")
        assert lun.read_bytes() == patched(data, X1, X4)
        assert _images(state, uid) == []
        assert _snaps(state, uid)["snapshots"] == []
        listing = cli_json(state, "medium", "list")
        assert [r["location"] for r in listing] == [target.url]
    finally:
        target.stop()
