"""nbdcopy round trip through blockyard: file -> export -> file, checksums equal.

The source is sparse: holes, random data, and allocated runs of zeroes, so
nbdcopy's zero detection (block status on the way out, zero requests on the
way in) is exercised.  The export starts full of junk, so skipped zeroing
shows up in the checksum.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nbd_helpers import MiB, data_ranges, fill_file, run, sha256_file, sparse_file, write_at

pytestmark = [pytest.mark.interop, pytest.mark.peers("nbdcopy")]

CHUNK = 16 * MiB
CHUNKS = 18  # 288 MiB in all, 192 MiB of it random data
SIZE = CHUNK * CHUNKS


def _make_source(path: Path) -> list[int]:
    """Write the source image; returns the offsets of the chunks left as holes."""
    sparse_file(path, SIZE)
    holes = []
    for i in range(CHUNKS):
        off = i * CHUNK
        if i % 3 == 0:
            holes.append(off)
            continue
        write_at(path, off, os.urandom(CHUNK))
        if i % 3 == 2:  # an allocated run of zeroes inside the data
            write_at(path, off + 4 * MiB, bytes(4 * MiB))
    return holes


def _is_hole(path: Path, offset: int, length: int) -> bool:
    return all(o + n <= offset or o >= offset + length for o, n in data_ranges(path))


def test_nbdcopy_round_trip(nbd_server, tmp_path: Path) -> None:
    src, dst, back = tmp_path / "src.img", tmp_path / "dst.img", tmp_path / "back.img"
    holes = _make_source(src)
    fill_file(dst, SIZE, 0xEE)
    server = nbd_server(dst)
    uri = server.uri("dst")

    run(["nbdcopy", "--flush", str(src), uri], timeout=300)
    want = sha256_file(src)
    assert sha256_file(dst) == want
    assert [off for off in holes if not _is_hole(dst, off, CHUNK)] == [], \
        "zero detection should have punched the source's holes in the export"

    run(["nbdcopy", uri, str(back)], timeout=300)
    assert sha256_file(back) == want
    assert [off for off in holes if not _is_hole(back, off, CHUNK)] == [], \
        "block status should have let nbdcopy skip the export's holes"
    assert server.alive()
