"""Clients that hang up rudely: the server must go on serving everyone else.

nbdkit 1.32.5 aborts when a client drops while replies are queued (see the
protocols notes); these tests make sure blockyard does not.  A well-behaved
client is connected before the rude one and used after it, and a new client
connects at the end; the server log must hold no traceback.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest
from nbd_helpers import MiB, sparse_file, write_at

pytestmark = pytest.mark.interop

SIZE = 64 * MiB
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST = struct.Struct(">IHHQQI")


@pytest.fixture
def disk(tmp_path: Path) -> tuple[Path, bytes]:
    path = sparse_file(tmp_path / "disk.img", SIZE)
    head = os.urandom(MiB)
    write_at(path, 0, head)
    return path, head


def _reset_on_close(fd: int) -> None:
    """Make the socket behind ``fd`` send RST instead of FIN when it is closed."""
    s = socket.socket(fileno=os.dup(fd))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # closes only the duplicate


def _raw_connect(port: int, name: str) -> socket.socket:
    """Fixed-newstyle handshake by hand, ending with NBD_OPT_GO (simple replies)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    greeting = _recv_exact(s, 18)
    assert greeting[:16] == b"NBDMAGICIHAVEOPT"
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    data = struct.pack(">I", len(name)) + name.encode() + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", IHAVEOPT, 7, len(data)) + data)
    while True:
        magic, _opt, rep, length = struct.unpack(">QIII", _recv_exact(s, 20))
        assert magic == REPLY_MAGIC
        _recv_exact(s, length)
        if rep == 1:  # NBD_REP_ACK
            return s
        assert rep == 3, f"unexpected option reply {rep:#x}"  # NBD_REP_INFO


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "server closed the connection"
        buf += chunk
    return buf


def _check_served(nbd, h, uri: str, head: bytes) -> None:  # type: ignore[no-untyped-def]
    """The old client still works, and so does a brand new one."""
    assert h.pread(MiB, 0) == head
    h.pwrite(b"after" * 100, 10 * MiB)
    h.flush()
    fresh = nbd.NBD()
    fresh.connect_uri(uri)
    assert fresh.pread(500, 10 * MiB) == b"after" * 100
    assert fresh.pread(MiB, 0) == head
    fresh.shutdown()


def test_libnbd_closes_with_large_reads_in_flight(nbd, nbd_server, disk) -> None:
    path, head = disk
    server = nbd_server(path)
    uri = server.uri("disk")
    good = nbd.NBD()
    good.connect_uri(uri)
    for rude_exit in ("close", "reset"):
        rude = nbd.NBD()
        rude.connect_uri(uri)
        for i in range(48):  # 192 MiB of replies requested, none read
            rude.aio_pread(nbd.Buffer(4 * MiB), (i % 16) * 4 * MiB)
        if rude_exit == "reset":
            _reset_on_close(rude.aio_get_fd())
        del rude  # nbd_close: the socket goes away with the replies still coming
        _check_served(nbd, good, uri, head)
    good.shutdown()
    assert server.alive()
    assert "Traceback" not in server.log()


def test_raw_client_resets_mid_request(nbd, nbd_server, disk) -> None:
    """RST with many reads queued, and RST halfway through a write's payload."""
    path, head = disk
    server = nbd_server(path)
    good = nbd.NBD()
    good.connect_uri(server.uri("disk"))
    s = _raw_connect(server.port, "disk")
    s.sendall(b"".join(REQUEST.pack(0x25609513, 0, 0, i, (i % 32) * MiB, MiB)
                       for i in range(128)))
    _recv_exact(s, 16 + 4096)  # the first reply has started to arrive
    _reset_on_close(s.fileno())
    s.close()
    s = _raw_connect(server.port, "disk")
    s.sendall(REQUEST.pack(0x25609513, 0, 1, 1, 20 * MiB, 4 * MiB) + b"\xff" * (2 * MiB))
    _reset_on_close(s.fileno())
    s.close()
    _check_served(nbd, good, server.uri("disk"), head)
    good.shutdown()
    assert good.aio_is_closed()
    fresh = nbd.NBD()
    fresh.connect_uri(server.uri("disk"))
    assert fresh.pread(4 * MiB, 20 * MiB) == bytes(4 * MiB), "a half-sent write was applied"
    fresh.shutdown()
    assert server.alive()
    assert "Traceback" not in server.log()
