"""qemu-img against blockyard: convert to and from the export, compare, info, map."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from nbd_helpers import MiB, fill_file, run, sha256_file, sparse_file, write_at

pytestmark = [pytest.mark.interop, pytest.mark.peers("qemu-img", "qemu-io")]

SIZE = 64 * MiB


def _source(path: Path) -> Path:
    """Random data at 0-8M and 24-40M, zeroes written at 4-6M, holes elsewhere."""
    sparse_file(path, SIZE)
    write_at(path, 0, os.urandom(8 * MiB))
    write_at(path, 4 * MiB, bytes(2 * MiB))
    write_at(path, 24 * MiB, os.urandom(16 * MiB))
    return path


def test_convert_into_export_and_compare(nbd_server, tmp_path: Path) -> None:
    src = _source(tmp_path / "src.img")
    dst = fill_file(tmp_path / "dst.img", SIZE, 0xEE)
    uri = nbd_server(dst).uri("dst")
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), uri])
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri])
    assert sha256_file(dst) == sha256_file(src)


def test_convert_out_of_export_to_qcow2(nbd_server, tmp_path: Path) -> None:
    src = _source(tmp_path / "src.img")
    uri = nbd_server(src, read_only=True).uri("src")
    out = tmp_path / "out.qcow2"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", uri, str(out)])
    run(["qemu-img", "check", "-f", "qcow2", str(out)])
    run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", uri, str(out)])
    back = tmp_path / "back.img"
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(out), str(back)])
    assert sha256_file(back) == sha256_file(src)
    # block status told qemu where the holes are: the qcow2 holds only the data
    allocated = json.loads(run(["qemu-img", "map", "--output=json", str(out)]).stdout)
    data = sum(e["length"] for e in allocated if e["data"])
    assert data <= 24 * MiB, f"{data} bytes allocated in qcow2, source has 22-24 MiB of data"


def test_compare_notices_a_difference(nbd_server, tmp_path: Path) -> None:
    src = _source(tmp_path / "src.img")
    copy = tmp_path / "copy.img"
    copy.write_bytes(src.read_bytes())
    uri = nbd_server(copy).uri("copy")
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri])
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x01 30M 512", uri])
    res = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), uri], check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Content mismatch at offset 31457280" in res.stdout


def test_info_and_map(nbd_server, tmp_path: Path) -> None:
    src = _source(tmp_path / "src.img")
    uri = nbd_server(src).uri("src")
    info = json.loads(run(["qemu-img", "info", "--output=json", uri]).stdout)
    assert info["virtual-size"] == SIZE
    extents = json.loads(run(["qemu-img", "map", "--output=json", "-f", "raw", uri]).stdout)
    data = [(e["start"], e["length"]) for e in extents if e["data"]]
    assert data == [(0, 8 * MiB), (24 * MiB, 16 * MiB)]
    zero = [(e["start"], e["length"]) for e in extents if e["zero"] and not e["data"]]
    assert zero == [(8 * MiB, 16 * MiB), (40 * MiB, 24 * MiB)]
