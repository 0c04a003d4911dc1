"""A quick-mode iSCSI LUN keeps its identity (VPD 83h) across restarts, so a local
differencing image made over it opens again after the target was restarted; another
file is another LUN.  An image with a UUID of its own (VDI) is identified by it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from remote_parent_support import MiB, QuickNbd, Target, probe_uuid, random_file, run

nbd = pytest.importorskip("nbd")


def test_the_same_file_is_the_same_lun_after_a_restart(tmp_path: Path) -> None:
    lun = tmp_path / "lun.img"
    data = random_file(lun, 4 * MiB)
    other = tmp_path / "other" / "lun.img"
    other.parent.mkdir()
    random_file(other, 4 * MiB)
    target = Target.start(lun)
    try:
        first = probe_uuid(target.url)
        assert run("medium", "create", str(tmp_path / "child.vdi"), "--parent",
                   target.url).returncode == 0
    finally:
        target.stop()
    target = Target.start(lun, target.port)  # restarted: the child must open over it
    try:
        assert probe_uuid(target.url) == first
        served = QuickNbd.start(tmp_path / "child.vdi")
        try:
            h = served.connect("child")
            assert h.pread(4 * MiB, 0) == data
            h.shutdown()
        finally:
            served.stop()
    finally:
        target.stop()
    target = Target.start(other, target.port)  # another file at the same URL
    try:
        assert probe_uuid(target.url) != first
    finally:
        target.stop()


def test_an_image_with_a_uuid_is_identified_by_it(tmp_path: Path) -> None:
    disk = tmp_path / "disk.vdi"
    assert run("medium", "create", str(disk), "--size", "4M").returncode == 0
    image_uuid = json.loads(run("medium", "info", str(disk), "--json").stdout)["uuid"]
    target = Target.start(disk)
    try:
        probe = json.loads(run("iscsi", "probe", target.url, "--json").stdout)
        assert probe["serial"] == image_uuid.replace("-", "")  # VPD 80h: the UUID's hex
    finally:
        target.stop()
