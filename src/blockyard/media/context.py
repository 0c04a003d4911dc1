"""What an operation runs with: the registry, the state directory, the live server.

Every operation in ``ops`` / ``attach_ops`` is ``async def op(ctx, **params)``.
The same code runs in two places:

* inside the daemon, which owns the registry while it runs: ``ctx.live`` is
  the daemon's ``Live`` hooks, so an attach becomes an export at once, a
  detach drains the sessions using it, and a medium being served is read
  through its open stack;
* in the CLI when no server runs: ``ctx.live`` is None and only the
  database and the files change.

Two commands racing on one medium -- two CLI processes, or two API calls in
the daemon -- are serialised by ``medium_lock``: an ``flock`` on a file per
medium under ``STATE/locks``.  ``flock`` locks belong to an open file, so the
lock works between processes and between tasks of one process alike.  A
command waits up to ``LOCK_WAIT`` seconds, then fails with a
``ConflictError`` saying the medium is busy; the registry is untouched.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from blockyard.block.layer import Layer
from blockyard.errors import ConflictError, NotFoundError
from blockyard.media.model import Attachment, Medium
from blockyard.media.registry import Registry

LOCK_WAIT = 30.0


class Live(Protocol):
    """The daemon's side of an operation (see ``daemon.LiveServer``)."""

    def open_layer(self, uuid: str) -> Layer | None:
        """The stack serving medium ``uuid`` now, or None when it is not open."""

    async def attach(self, att: Attachment, medium: Medium) -> None:
        """Open the medium (shared by all its attachments) and publish the export."""

    async def detach(self, att: Attachment) -> int:
        """Withdraw the export, drain its sessions, close the medium when unused."""

    def sessions(self) -> list[dict[str, Any]]:
        """Every connection: peer, export, requests and bytes."""

    def exports(self) -> list[dict[str, Any]]:
        """Every export: name, size, read-only, stats, connections."""


@dataclass
class Context:
    registry: Registry
    state_dir: Path
    live: Live | None = None

    def lookup(self, uuid: str) -> Medium:
        m = self.registry.medium(uuid)
        if m is None:
            raise NotFoundError(f"no medium with UUID {uuid} in the registry")
        return m


@asynccontextmanager
async def medium_lock(ctx: Context, uuid: str, label: str,
                      wait: float | None = None) -> AsyncIterator[None]:
    """Hold the per-medium lock (waiting up to ``wait``, default ``LOCK_WAIT`` seconds)."""
    directory = ctx.state_dir / "locks"
    directory.mkdir(exist_ok=True)
    fd = os.open(directory / f"{uuid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + (LOCK_WAIT if wait is None else wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConflictError(f"medium {label} is busy with another command; "
                                        "try again when it has finished") from None
                await asyncio.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing drops the flock


@asynccontextmanager
async def locked_medium(ctx: Context, ref: str) -> AsyncIterator[Medium]:
    """Resolve ``ref``, lock the medium, and yield its row as it is *after* the wait."""
    first = ctx.registry.resolve(ref)
    async with medium_lock(ctx, first.uuid, repr(ref)):
        now = ctx.registry.medium(first.uuid)
        if now is None:
            raise NotFoundError(f"medium {ref!r} was removed by another command")
        yield now
