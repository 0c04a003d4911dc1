"""The control API in-process: HTTP parsing, routes, errors, auth, metrics.

A real ``HttpServer`` on a unix socket (and TCP) in this event loop, a
registry in a temp dir, and the CLI's own ``RemoteBackend`` as the client
(run on a thread: it is blocking).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from blockyard.cli.client import RemoteBackend, open_backend
from blockyard.control.api import Api, error_response, match
from blockyard.control.http import HttpServer
from blockyard.errors import ConfigError, ConflictError, NotFoundError
from blockyard.media.context import Context
from blockyard.media.registry import Registry


def _views() -> dict[str, Any]:
    exports = [{"name": 'we"ird', "size": 1 << 20, "requests": 3, "bytes": 12288,
                "read_only": False, "description": "", "peers": [], "stack": "ram"}]
    sessions = [{"protocol": "nbd", "peer": "127.0.0.1:5", "export": 'we"ird'}]
    return {"live.exports": lambda: exports, "live.sessions": lambda: sessions,
            "live.health": lambda: {"ok": True}}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Path, HttpServer]]:
    state = tmp_path / "state"
    reg = Registry(state)
    http = HttpServer(Api(Context(reg, state), _views()).handle, error_response, "s3cret")
    await http.listen_unix(str(state / "control.sock"))
    yield state, http
    await http.close()
    reg.close()


async def _raw(path: Path | tuple[str, int], data: bytes) -> bytes:
    if isinstance(path, Path):
        reader, writer = await asyncio.open_unix_connection(str(path))
    else:
        reader, writer = await asyncio.open_connection(*path)
    writer.write(data)
    out = await reader.read()
    writer.close()
    return out


def test_route_table_matches_paths_and_params() -> None:
    assert match("GET", ["v1", "media", "search"]) == ("media.search", {})
    assert match("GET", ["v1", "media", "disk.img"]) == ("media.info", {"ref": "disk.img"})
    assert match("DELETE", ["v1", "attachments", "sata0", "3"]) == (
        "attachments.remove", {"controller": "sata0", "port": "3"})
    assert match("PUT", ["v1", "media"]) is None


async def test_socket_is_private(api: tuple[Path, HttpServer]) -> None:
    state, _ = api
    mode = os.stat(state / "control.sock").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


async def test_operations_round_trip_through_the_cli_client(api: tuple[Path, HttpServer],
                                                            tmp_path: Path) -> None:
    state, _ = api
    backend = open_backend(state)
    assert isinstance(backend, RemoteBackend)
    disk = tmp_path / "d.img"
    m = await asyncio.to_thread(backend.call, "media.add", path=str(disk), create_size="1M")
    assert m["location"] == str(disk)
    found = await asyncio.to_thread(backend.call, "media.info", ref=str(disk))  # %2F-quoted
    assert found["uuid"] == m["uuid"]
    await asyncio.to_thread(backend.call, "controllers.add", name="c", type="sata")
    await asyncio.to_thread(backend.call, "attachments.add", controller="c", medium="d.img",
                            port=4)
    with pytest.raises(ConflictError, match="taken"):
        await asyncio.to_thread(backend.call, "attachments.add", controller="c",
                                medium="d.img", port=4)
    out = await asyncio.to_thread(backend.call, "attachments.remove", controller="c", port=4)
    assert out["port"] == 4
    with pytest.raises(NotFoundError):
        await asyncio.to_thread(backend.call, "media.info", ref="nothing")
    removed = await asyncio.to_thread(backend.call, "media.remove", ref="d.img", delete=True)
    assert removed["deleted"] and not disk.exists()


async def test_bad_requests_get_clear_json_errors(api: tuple[Path, HttpServer]) -> None:
    state, _ = api
    sock = state / "control.sock"
    for request, status, text in [
        (b"GET /v1/nothing HTTP/1.1\r\n\r\n", 404, "no route"),
        (b"PUT /v1/media HTTP/1.1\r\n\r\n", 405, "no route"),
        (b"POST /v1/controllers HTTP/1.1\r\nContent-Length: 5\r\n\r\n{oops", 400, "not JSON"),
        (b'POST /v1/controllers HTTP/1.1\r\nContent-Length: 12\r\n\r\n{"name":"x"}', 400,
         "missing a required argument: 'type'"),
        (b"GET /v1/media?bogus=1 HTTP/1.1\r\n\r\n", 400, "unexpected keyword"),
        (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
        (b"GET /v1/media HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413, "too large"),
    ]:
        reply = await _raw(sock, request)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status} ".encode()), (request, reply)
        assert text in json.loads(body)["error"], (request, body)


async def test_tcp_listener_wants_the_bearer_token(api: tuple[Path, HttpServer]) -> None:
    _, http = api
    addr = await http.listen_tcp("127.0.0.1", 0)
    no = await _raw(addr, b"GET /v1/health HTTP/1.1\r\n\r\n")
    wrong = await _raw(addr, b"GET /v1/health HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n")
    ok = await _raw(addr, b"GET /v1/health HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n")
    assert no.startswith(b"HTTP/1.1 401") and wrong.startswith(b"HTTP/1.1 401")
    assert ok.startswith(b"HTTP/1.1 200") and b'"ok": true' in ok


async def test_metrics_are_prometheus_text(api: tuple[Path, HttpServer]) -> None:
    state, _ = api
    reply = await _raw(state / "control.sock", b"GET /metrics HTTP/1.1\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"Content-Type: text/plain; version=0.0.4" in head
    text = body.decode()
    assert '# TYPE blockyard_export_bytes_total counter' in text
    assert 'blockyard_export_bytes_total{export="we\\"ird"} 12288' in text
    assert 'blockyard_export_sessions{export="we\\"ird"} 1' in text
    assert 'blockyard_export_size_bytes{export="we\\"ird"} 1048576' in text
    for line in text.splitlines():
        assert line.startswith("#") or line.split()[-1].isdigit(), line


def test_socket_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a socket to another uid")
    path = tmp_path / "control.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    os.chown(path, 4242, 4242)
    with pytest.raises(ConfigError, match="belongs to uid 4242"):
        open_backend(tmp_path)
    s.close()


def test_stale_socket_falls_back_to_the_database(tmp_path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "control.sock"))
    s.close()  # bound, never listening: what a crashed server leaves
    backend = open_backend(tmp_path)
    assert not backend.remote
    assert backend.call("media.list") == []
    with pytest.raises(NotFoundError, match="no blockyard server"):
        backend.call("live.sessions")


def test_a_server_holding_the_lock_without_a_socket_stops_the_cli(tmp_path: Path) -> None:
    import fcntl

    fd = os.open(tmp_path / "server.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(ConflictError, match="does not answer"):
            open_backend(tmp_path)
    finally:
        os.close(fd)
    assert not open_backend(tmp_path).remote


async def test_database_and_file_errors_become_blockyard_errors(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    from blockyard.control.api import call_operation
    from blockyard.errors import MediaError
    from blockyard.media import operations

    reg = Registry(tmp_path)
    ctx = Context(reg, tmp_path)

    async def integrity(ctx: Context) -> None:
        raise sqlite3.IntegrityError("UNIQUE constraint failed: attachments.export_name")

    async def oserror(ctx: Context) -> None:
        raise PermissionError(13, "Permission denied", "/srv/x.img")
    monkeypatch.setitem(operations.OPERATIONS, "media.refresh", integrity)
    with pytest.raises(ConflictError, match="registry refused the change"):
        await call_operation(ctx, "media.refresh", {})
    monkeypatch.setitem(operations.OPERATIONS, "media.refresh", oserror)
    with pytest.raises(MediaError, match="/srv/x.img: Permission denied"):
        await call_operation(ctx, "media.refresh", {})
    reg.close()
