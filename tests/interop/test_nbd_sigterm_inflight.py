"""SIGTERM while a client has writes in flight: every write the server acknowledged
is in the file, the others failed visibly, and the server exits 0."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
from nbd_helpers import read_at, sparse_file

pytestmark = pytest.mark.interop

BLOCK = 256 << 10
COUNT = 64


def _outcome(nbd, h, cookie: int) -> str:  # type: ignore[no-untyped-def]
    try:
        return "ok" if h.aio_command_completed(cookie) else "unfinished"
    except nbd.Error as exc:
        return "eshutdown" if exc.errnum == errno.ESHUTDOWN else f"error {exc.errnum}"


def test_sigterm_with_writes_in_flight(nbd, nbd_server, tmp_path: Path) -> None:
    path = sparse_file(tmp_path / "disk.img", COUNT * BLOCK)
    server = nbd_server(path)
    h = nbd.NBD()
    h.connect_uri(server.uri("disk"))
    blocks = [os.urandom(BLOCK) for _ in range(COUNT)]
    cookies = [h.aio_pwrite(nbd.Buffer.from_bytearray(data), i * BLOCK)
               for i, data in enumerate(blocks)]
    server.proc.send_signal(signal.SIGTERM)
    while h.aio_in_flight() > 0 and not h.aio_is_dead() and not h.aio_is_closed():
        try:
            h.poll(5000)
        except nbd.Error:
            break
    outcomes = [_outcome(nbd, h, cookie) for cookie in cookies]
    assert server.proc.wait(20) == 0, server.log()
    acked = [i for i, o in enumerate(outcomes) if o == "ok"]
    assert [i for i in acked if read_at(path, i * BLOCK, BLOCK) != blocks[i]] == []
    odd = [o for o in outcomes if o not in ("ok", "eshutdown", "unfinished")
           and not o.startswith("error ")]
    assert odd == []
    assert "Traceback" not in server.log()
