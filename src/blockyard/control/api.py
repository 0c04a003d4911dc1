"""The control API's routes: a table from (method, path) to an operation.

Paths (``{x}`` is one URL-quoted path segment; a medium path as a name must
be quoted, ``/`` as ``%2F``)::

    GET    /v1/media[?kind=hdd]              media.list
    POST   /v1/media                         media.add          {"path": ...}
    GET    /v1/media/search?text=T           media.search
    POST   /v1/media/refresh                 media.refresh
    POST   /v1/media/clear-inaccessible      media.clear_inaccessible
    GET    /v1/media/{ref}                   media.info
    PATCH  /v1/media/{ref}                   media.modify       {"description": ...}
    DELETE /v1/media/{ref}[?delete=true]     media.remove
    POST   /v1/media/{src}/clone             media.clone        {"dst": ...}
    POST   /v1/media/{ref}/release           media.release
    GET    /v1/media/{ref}/snapshots         snapshots.list
    POST   /v1/media/{ref}/snapshots         snapshots.take     {"name": ...}
    POST   /v1/media/{ref}/snapshots/{snapshot}/restore  snapshots.restore
    DELETE /v1/media/{ref}/snapshots/{snapshot}  snapshots.delete (merge; progress in the log)
    GET    /v1/controllers                   controllers.list
    POST   /v1/controllers                   controllers.add    {"name", "type"}
    DELETE /v1/controllers/{name}            controllers.remove
    GET    /v1/attachments                   attachments.list
    POST   /v1/attachments                   attachments.add    {"controller", "medium"}
    DELETE /v1/attachments/{controller}/{port}  attachments.remove
    POST   /v1/media/{ref}/bandwidth-group   media.bandwidth_group {"group": NAME|"none"}
    GET    /v1/bandwidth-groups              bandwidth.list
    POST   /v1/bandwidth-groups              bandwidth.add      {"name", "limit"}
    PATCH  /v1/bandwidth-groups/{name}       bandwidth.set      {"limit"} (live at once)
    DELETE /v1/bandwidth-groups/{name}       bandwidth.remove   (refused while media use it)
    GET    /v1/sessions  /v1/exports  /v1/health   live views
    GET    /v1/targets                       live view: iSCSI targets and their LUNs
    GET    /metrics                          Prometheus text format

Parameters come from the path, the query string and a JSON object body,
merged, and are bound to the operation's signature before it runs, so an
unknown or missing parameter is a 400 naming it.  Errors are JSON
``{"error": message, "type": "ConflictError", "exit_status": 6}`` with the
HTTP status of ``STATUS`` -- the CLI client raises the same error class
again, so a command prints the same line whether a server runs or not.
"""

from __future__ import annotations

import inspect
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from blockyard import errors
from blockyard.control.http import Request, Response
from blockyard.control.metrics import render_metrics
from blockyard.media.context import Context
from blockyard.media.operations import OPERATIONS
from blockyard.media.ops import BANDWIDTH_OPERATIONS
from blockyard.media.snapshot_ops import SNAPSHOT_OPERATIONS

OPERATIONS.update(SNAPSHOT_OPERATIONS)  # until media/operations.py lists them itself
OPERATIONS.update(BANDWIDTH_OPERATIONS)  # idem

log = logging.getLogger("blockyard.control")

ROUTES: list[tuple[str, str, str]] = [
    ("GET", "/v1/media", "media.list"),
    ("POST", "/v1/media", "media.add"),
    ("GET", "/v1/media/search", "media.search"),
    ("POST", "/v1/media/refresh", "media.refresh"),
    ("POST", "/v1/media/clear-inaccessible", "media.clear_inaccessible"),
    ("GET", "/v1/media/{ref}", "media.info"),
    ("PATCH", "/v1/media/{ref}", "media.modify"),
    ("DELETE", "/v1/media/{ref}", "media.remove"),
    ("POST", "/v1/media/{src}/clone", "media.clone"),
    ("POST", "/v1/media/{ref}/release", "media.release"),
    ("GET", "/v1/media/{ref}/snapshots", "snapshots.list"),
    ("POST", "/v1/media/{ref}/snapshots", "snapshots.take"),
    ("POST", "/v1/media/{ref}/snapshots/{snapshot}/restore", "snapshots.restore"),
    ("DELETE", "/v1/media/{ref}/snapshots/{snapshot}", "snapshots.delete"),
    ("GET", "/v1/controllers", "controllers.list"),
    ("POST", "/v1/controllers", "controllers.add"),
    ("DELETE", "/v1/controllers/{name}", "controllers.remove"),
    ("GET", "/v1/attachments", "attachments.list"),
    ("POST", "/v1/attachments", "attachments.add"),
    ("DELETE", "/v1/attachments/{controller}/{port}", "attachments.remove"),
    ("POST", "/v1/media/{ref}/bandwidth-group", "media.bandwidth_group"),
    ("GET", "/v1/bandwidth-groups", "bandwidth.list"),
    ("POST", "/v1/bandwidth-groups", "bandwidth.add"),
    ("PATCH", "/v1/bandwidth-groups/{name}", "bandwidth.set"),
    ("DELETE", "/v1/bandwidth-groups/{name}", "bandwidth.remove"),
    ("GET", "/v1/sessions", "live.sessions"),
    ("GET", "/v1/exports", "live.exports"),
    ("GET", "/v1/health", "live.health"),
    ("GET", "/v1/targets", "live.targets"),
    ("GET", "/metrics", "live.metrics"),
]
STATUS: dict[type[errors.BlockyardError], int] = {
    errors.ConfigError: 400, errors.NotFoundError: 404, errors.ConflictError: 409,
    errors.MediaError: 422, errors.BlockError: 500,
}
ERROR_TYPES = {cls.__name__: cls for cls in (*STATUS, errors.BlockyardError)}


def match(method: str, segments: list[str]) -> tuple[str, dict[str, str]] | None:
    """The operation name and path parameters for a request, or None."""
    for m, pattern, op in ROUTES:
        parts = [p for p in pattern.split("/") if p]
        if m != method or len(parts) != len(segments):
            continue
        params: dict[str, str] = {}
        for want, got in zip(parts, segments, strict=True):
            if want.startswith("{"):
                params[want[1:-1]] = got
            elif want != got:
                break
        else:
            return op, params
    return None


def route_for(op: str) -> tuple[str, str]:
    for method, pattern, name in ROUTES:
        if name == op:
            return method, pattern
    raise KeyError(op)


def error_response(status: int, message: str,
                   cls: type[errors.BlockyardError] = errors.ConfigError) -> Response:
    body = {"error": message, "type": cls.__name__, "exit_status": cls.exit_status}
    return Response(status, json.dumps(body).encode())


def _json(value: Any) -> Response:
    return Response(200, json.dumps(value, indent=1).encode() + b"\n")


def _coerce(key: str, value: str) -> Any:
    """Query-string and path values are text; give ports and flags their types."""
    if key == "port" and value.isdigit():
        return int(value)
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


class Api:
    """Turns requests into operation calls on ``ctx`` (whose ``live`` is the daemon)."""

    def __init__(self, ctx: Context, live_views: dict[str, Callable[[], Any]]) -> None:
        self.ctx = ctx
        self.live_views = live_views

    async def handle(self, req: Request) -> Response:
        found = match(req.method, req.segments)
        if found is None:
            known = any(match(m, req.segments) for m in ("GET", "POST", "PATCH", "DELETE"))
            return error_response(405 if known else 404,
                                  f"no route {req.method} /{'/'.join(req.segments)}")
        op, params = found
        try:
            return await self._call(op, params, req)
        except errors.BlockyardError as exc:
            cls = next((c for c in STATUS if isinstance(exc, c)), errors.BlockyardError)
            return error_response(STATUS.get(cls, 500), str(exc), type(exc))
        except Exception as exc:  # a bug costs one request, not the daemon
            log.exception("control: %s failed", op)
            return error_response(500, f"internal error: {exc}", errors.BlockyardError)

    async def _call(self, op: str, params: dict[str, Any], req: Request) -> Response:
        if op == "live.metrics":
            return Response(200, render_metrics(self.ctx, self.live_views).encode(),
                            "text/plain; version=0.0.4")
        if op.startswith("live."):
            return _json(self.live_views[op]())
        merged = {k: _coerce(k, v) for k, v in {**req.query, **params}.items()}
        merged.update(_body(req))
        return _json(await call_operation(self.ctx, op, merged))


def _body(req: Request) -> dict[str, Any]:
    if not req.body:
        return {}
    try:
        body = json.loads(req.body)
    except ValueError:
        raise errors.ConfigError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise errors.ConfigError("the request body must be a JSON object")
    return body


async def call_operation(ctx: Context, op: str, params: dict[str, Any]) -> Any:
    """Run operation ``op`` with ``params`` bound to its signature (400 when they do not fit).

    Errors that are not ``BlockyardError`` yet -- a constraint the database
    enforced, an ``OSError`` from a file -- become one (409, 422) here, so
    neither the API nor the local CLI ever shows a traceback for them.
    """
    func = OPERATIONS[op]
    try:
        inspect.signature(func).bind(ctx, **params)
    except TypeError as exc:
        raise errors.ConfigError(f"{op}: {exc}") from None
    result: Awaitable[Any] = func(ctx, **params)
    try:
        return await result
    except sqlite3.IntegrityError as exc:  # a race the checks did not see: still no traceback
        raise errors.ConflictError(f"{op}: the registry refused the change ({exc}); "
                                   "look again and retry") from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise errors.MediaError(f"{op}: {where}{exc.strerror or exc}") from None
