"""The CLI's way to the registry: through the running server, or straight to the file.

``open_backend(state_dir)`` decides once per command:

* the control socket ``STATE/control.sock`` exists and accepts a connection
  -> ``RemoteBackend``: each operation becomes one HTTP request (the route
  table is ``control.api.ROUTES``), and an error comes back as the same
  ``BlockyardError`` class with the same message;
* otherwise, if no server holds ``STATE/server.lock`` -> ``LocalBackend``:
  the operation runs in this process on the database (WAL + ``BEGIN
  IMMEDIATE`` keep several CLI processes from losing each other's updates);
* a server holds the lock but its socket does not answer -> an error, so a
  CLI never edits the registry behind a running server's back.

A socket owned by another user is refused before connecting: another user
could otherwise put a socket in a shared directory and answer for the
server.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from blockyard import errors
from blockyard.control.api import ERROR_TYPES, call_operation, route_for
from blockyard.errors import ConfigError, ConflictError, NotFoundError

SOCKET_NAME = "control.sock"
LOCK_NAME = "server.lock"


def default_state_dir() -> Path:
    env = os.environ.get("BLOCKYARD_STATE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "blockyard"


def state_dir_of(args: Any) -> Path:
    given = getattr(args, "state_dir", None)
    return Path(given).expanduser() if given else default_state_dir()


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class RemoteBackend:
    remote = True

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, method: str, target: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = _UnixHTTPConnection(str(self.path), self.timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError as exc:
            raise ConflictError(f"the server's control socket {self.path} failed: "
                                f"{exc.strerror or exc}") from None
        finally:
            conn.close()

    def call(self, op: str, **params: Any) -> Any:
        method, pattern = route_for(op)
        params = {k: v for k, v in params.items() if v is not None}
        parts = []
        for seg in pattern.split("/"):
            if seg.startswith("{"):
                seg = quote(str(params.pop(seg[1:-1])), safe="")
            parts.append(seg)
        target = "/".join(parts)
        body = None
        if method in ("GET", "DELETE"):
            query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
            target += "?" + urlencode(query) if query else ""
        else:
            body = json.dumps(params).encode()
        status, data = self.request(method, target, body)
        if status != 200:
            raise _error_from(status, data)
        if op == "live.metrics":
            return data.decode()
        return json.loads(data)


def _error_from(status: int, data: bytes) -> errors.BlockyardError:
    try:
        body = json.loads(data)
        cls = ERROR_TYPES.get(body.get("type"), errors.BlockyardError)
        message = str(body.get("error"))
    except (ValueError, AttributeError):
        return errors.BlockyardError(f"server answered HTTP {status}")
    if cls is errors.BlockError:
        return errors.BlockError(errno.EIO, message)
    return cls(message)


class LocalBackend:
    remote = False

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def call(self, op: str, **params: Any) -> Any:
        if op.startswith("live."):
            raise NotFoundError(f"no blockyard server is running with state directory "
                                f"{self.state_dir}")
        from blockyard.media.context import Context
        from blockyard.media.registry import Registry

        registry = Registry(self.state_dir)
        try:
            ctx = Context(registry, self.state_dir)
            params = {k: v for k, v in params.items() if v is not None}
            return asyncio.run(call_operation(ctx, op, params))
        finally:
            registry.close()


def _server_holds_lock(state_dir: Path) -> bool:
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def open_backend(state_dir: Path) -> RemoteBackend | LocalBackend:
    path = state_dir / SOCKET_NAME
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    if st is not None:
        if st.st_uid != os.getuid():
            raise ConfigError(f"{path}: the control socket belongs to uid {st.st_uid}, not to "
                              f"you (uid {os.getuid()}); run as that user or use another "
                              "--state-dir")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            return RemoteBackend(path)
        except OSError:
            pass
        finally:
            probe.close()
    if _server_holds_lock(state_dir):
        raise ConflictError(f"a blockyard server holds {state_dir} but its control socket "
                            f"{path} does not answer; is it starting or stuck?")
    return LocalBackend(state_dir)
