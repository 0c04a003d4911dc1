"""nbdinfo against blockyard: listing, capability probes, and the allocation map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nbd_helpers import MiB, data_ranges, run, sparse_file, write_at

pytestmark = [pytest.mark.interop, pytest.mark.peers("nbdinfo")]

SIZE = 16 * MiB
# What a writable raw file on a local filesystem must advertise (True = exit 0).
WRITABLE_CAN = {"flush": True, "fua": True, "trim": True, "zero": True, "fast-zero": True,
                "multi-conn": True, "cache": True, "df": True, "write": True,
                "structured-reply": True}
# Read-only: nothing that modifies data; flush, cache, df and multi-conn stay.
READ_ONLY_CAN = {"flush": True, "fua": False, "trim": False, "zero": False,
                 "fast-zero": False, "multi-conn": True, "cache": True, "df": True,
                 "write": False, "structured-reply": True}


def _can(uri: str, what: str) -> bool:
    verb = "--is" if what in ("read-only", "rotational") else "--can"
    res = run(["nbdinfo", verb, what, uri], check=False)
    assert res.returncode in (0, 2), f"nbdinfo {verb} {what}: {res.stderr}"
    return res.returncode == 0


def test_list_shows_every_export(nbd_server, tmp_path: Path) -> None:
    a = sparse_file(tmp_path / "alpha.img", SIZE)
    b = sparse_file(tmp_path / "beta.img", 3 * MiB)
    server = nbd_server(a, b)
    res = run(["nbdinfo", "--list", "--json", server.uri()])
    exports = {e["export-name"]: e for e in json.loads(res.stdout)["exports"]}
    assert set(exports) == {"alpha", "beta"}
    assert exports["alpha"]["export-size"] == SIZE
    assert exports["beta"]["export-size"] == 3 * MiB
    assert "base:allocation" in exports["alpha"]["contexts"]


@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_can_flags_match_the_export(nbd_server, tmp_path: Path, read_only: bool) -> None:
    server = nbd_server(sparse_file(tmp_path / "disk.img", SIZE), read_only=read_only)
    uri = server.uri("disk")
    expected = READ_ONLY_CAN if read_only else WRITABLE_CAN
    seen = {what: _can(uri, what) for what in expected}
    assert seen == expected
    assert _can(uri, "read-only") is read_only
    assert _can(uri, "rotational") is False


def _map(uri: str) -> list[tuple[int, int, int]]:
    res = run(["nbdinfo", "--map", "--json", uri])
    return [(e["offset"], e["length"], e["type"]) for e in json.loads(res.stdout)]


def _merge(extents: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    for off, length, kind in extents:
        if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + length, kind)
        else:
            out.append((off, length, kind))
    return out


def test_map_follows_writes_trims_and_zeroes(nbd, nbd_server, tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "disk.img", SIZE)
    write_at(path, 8 * MiB, b"\x5a" * (4 * MiB))  # data already there before serving
    server = nbd_server(path)
    h = nbd.NBD()
    h.connect_uri(server.uri("disk"))
    h.pwrite(b"\xa5" * MiB, 1 * MiB)
    h.pwrite(b"\x01" * (2 * MiB), 4 * MiB)
    h.trim(MiB, 9 * MiB)  # a hole inside the pre-existing data
    h.zero(MiB, 5 * MiB)  # may trim: punches the second half of the 4 MiB write
    h.flush()
    h.shutdown()
    data, hole = 0, 3  # nbdinfo types: 0 = data, 3 = hole,zero
    assert _merge(_map(server.uri("disk"))) == [
        (0, 1 * MiB, hole), (1 * MiB, MiB, data), (2 * MiB, 2 * MiB, hole),
        (4 * MiB, MiB, data), (5 * MiB, 3 * MiB, hole), (8 * MiB, MiB, data),
        (9 * MiB, MiB, hole), (10 * MiB, 2 * MiB, data), (12 * MiB, 4 * MiB, hole)]
    assert data_ranges(path) == [(MiB, MiB), (4 * MiB, MiB), (8 * MiB, MiB),
                                 (10 * MiB, 2 * MiB)]


def test_map_of_read_only_export_and_content(nbd_server, tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "ro.img", SIZE)
    write_at(path, 3 * MiB, b"x" * 4096)
    server = nbd_server(path, read_only=True)
    assert _can(server.uri("ro"), "read-only") is True
    assert _merge(_map(server.uri("ro"))) == [
        (0, 3 * MiB, 3), (3 * MiB, 4096, 0), (3 * MiB + 4096, SIZE - 3 * MiB - 4096, 3)]
    res = run(["nbdinfo", "--json", server.uri("ro")])
    info = json.loads(res.stdout)["exports"][0]
    assert info["is_read_only"] is True and info["export-size"] == SIZE
