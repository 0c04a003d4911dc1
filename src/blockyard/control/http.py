"""A small asyncio HTTP/1.1 server for the control API (stdlib only).

One request per connection (``Connection: close``): the CLI opens a
connection per command, so keep-alive would buy nothing.  The parser is
strict and bounded: a request line and headers of at most ``MAX_HEAD``
bytes, a body only with ``Content-Length`` and at most ``MAX_BODY`` bytes,
no chunked encoding; anything else is answered 400 or 413 and closed.

Who may talk to it:

* the unix socket is created with mode 0600 (``umask`` around ``bind`` so it
  is never briefly wider) in the state directory, and each peer's uid is
  read with ``SO_PEERCRED``: only our own uid and root get through;
* a TCP listener requires ``Authorization: Bearer TOKEN`` on every request,
  compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger("blockyard.control")
MAX_HEAD = 64 << 10
MAX_BODY = 16 << 20
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
           404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Too Large",
           422: "Unprocessable Entity", 500: "Internal Server Error", 503: "Unavailable"}


@dataclass
class Request:
    method: str
    segments: list[str]  # the path split on "/" and unquoted, empty parts dropped
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        head = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}",
                f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}",
                "Connection: close", *(f"{k}: {v}" for k, v in self.headers.items())]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[Request], Awaitable[Response]]
ErrorBody = Callable[[int, str], Response]


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise BadRequest(400, f"unsupported protocol {version!r}")
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    return method.upper(), target, headers


def split_target(target: str) -> tuple[list[str], dict[str, str]]:
    parts = urlsplit(target)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    return segments, dict(parse_qsl(parts.query, keep_blank_values=True))


class HttpServer:
    """Serves ``handler`` on unix and TCP listeners; ``error`` renders a failure body."""

    def __init__(self, handler: Handler, error: ErrorBody, token: str | None = None) -> None:
        self.handler = handler
        self.error = error
        self.token = token
        self.servers: list[asyncio.AbstractServer] = []
        self.unix_paths: list[str] = []

    async def listen_unix(self, path: str) -> None:
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(
                lambda r, w: self._client(r, w, tcp=False), path)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.servers.append(server)
        self.unix_paths.append(path)

    async def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        if not self.token:
            raise ValueError("a TCP control listener needs a token")
        server = await asyncio.start_server(lambda r, w: self._client(r, w, tcp=True),
                                            host, port)
        self.servers.append(server)
        addr = server.sockets[0].getsockname()
        return addr[0], addr[1]

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        for path in self.unix_paths:
            try:
                os.unlink(path)
            except OSError:
                pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      tcp: bool) -> None:
        try:
            response = await self._respond(reader, writer, tcp)
        except BadRequest as exc:
            response = self.error(exc.status, str(exc))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        try:
            writer.write(response.encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       tcp: bool) -> Response:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise BadRequest(413, "request head too large") from None
        if len(head) > MAX_HEAD:
            raise BadRequest(413, "request head too large")
        method, target, headers = parse_head(head[:-4])
        self._authorise(writer, headers, tcp)
        length = headers.get("content-length", "0")
        if not length.isdigit():
            raise BadRequest(400, "bad Content-Length")
        if int(length) > MAX_BODY:
            raise BadRequest(413, "request body too large")
        body = await reader.readexactly(int(length)) if int(length) else b""
        segments, query = split_target(target)
        return await self.handler(Request(method, segments, query, headers, body))

    def _authorise(self, writer: asyncio.StreamWriter, headers: dict[str, str],
                   tcp: bool) -> None:
        if tcp:
            given = headers.get("authorization", "")
            if not (self.token and hmac.compare_digest(given.encode(),
                                                       f"Bearer {self.token}".encode())):
                raise BadRequest(401, "missing or wrong bearer token")
            return
        sock = writer.get_extra_info("socket")
        if sock is None or not hasattr(socket, "SO_PEERCRED"):
            return
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
        except (OSError, AttributeError, TypeError):
            return  # the socket's mode 0600 still keeps other users out
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (os.getuid(), 0):
            raise BadRequest(403, f"uid {uid} may not use this control socket")
