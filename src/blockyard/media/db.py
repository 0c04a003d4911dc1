"""Opening the registry database and running transactions that survive contention.

The database is one SQLite file in the state directory, opened with:

* ``journal_mode=WAL`` -- readers never block the writer nor the other way
  round, and a crash leaves a WAL that the next open replays (a registry
  left by a crash reopens cleanly; SQLite's own recovery, nothing of ours);
* ``foreign_keys=ON`` -- the schema's references are enforced;
* ``busy_timeout`` -- a writer waits for another writer instead of failing;
* ``synchronous=NORMAL`` -- durable at every checkpoint, safe with WAL.

Every change runs through ``transact(conn, fn)``: ``BEGIN IMMEDIATE`` takes
the write lock *before* the first read, so a read-modify-write cannot lose
an update to another process, and a ``database is locked`` that outlasts the
busy timeout is retried with backoff until ``RETRY_FOR`` seconds have
passed.  Only then does the user see an error, as a ``ConflictError``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from blockyard.errors import ConfigError, ConflictError
from blockyard.media.schema import MIGRATIONS

T = TypeVar("T")
DB_NAME = "registry.sqlite"
BUSY_TIMEOUT_MS = 5000
RETRY_FOR = 60.0


def connect(state_dir: Path) -> sqlite3.Connection:
    """Open (creating if needed) the registry in ``state_dir`` and migrate it."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{state_dir}: cannot create state directory: {exc.strerror}") from None
    path = state_dir / DB_NAME
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _retry(lambda: conn.execute("PRAGMA journal_mode = WAL"))
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path}: not a usable registry database: {exc}") from None
    try:
        os.chmod(path, 0o600)
    except OSError:
        pass
    migrate(conn, path)
    return conn


def migrate(conn: sqlite3.Connection, path: Path | str = "registry") -> int:
    """Bring the schema to the newest version; returns the version."""
    if int(conn.execute("PRAGMA user_version").fetchone()[0]) == len(MIGRATIONS):
        return len(MIGRATIONS)  # the common case: no write transaction at all

    def step(c: sqlite3.Connection) -> int:
        version = int(c.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise ConfigError(f"{path}: registry version {version} is newer than this "
                              f"blockyard understands ({len(MIGRATIONS)})")
        for n in range(version, len(MIGRATIONS)):
            for statement in _statements(MIGRATIONS[n]):
                c.execute(statement)
            c.execute(f"PRAGMA user_version = {n + 1}")
        return len(MIGRATIONS)
    return transact(conn, step)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would COMMIT our transaction)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s]


def transact(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(conn)`` inside ``BEGIN IMMEDIATE``; retry while the database is busy."""
    def attempt() -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result
    return _retry(attempt)


def _retry(fn: Callable[[], T]) -> T:
    deadline = time.monotonic() + RETRY_FOR
    delay = 0.01
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            if time.monotonic() > deadline:
                raise ConflictError(f"the registry stayed busy for {RETRY_FOR:.0f} s; "
                                    "another process holds it") from None
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text
