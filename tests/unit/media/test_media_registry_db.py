"""The registry database: migrations, constraints, transactions under contention, crashes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blockyard.errors import ConfigError, ConflictError, NotFoundError
from blockyard.media import db
from blockyard.media.model import Attachment, Controller, Medium
from blockyard.media.registry import Registry
from blockyard.media.schema import MIGRATIONS


def _medium(n: int, **kw: object) -> Medium:
    return Medium(uuid=f"00000000-0000-0000-0000-{n:012d}", kind="hdd", format="raw",
                  location=f"/x/{n}.img", **kw)  # type: ignore[arg-type]


def test_fresh_registry_is_wal_with_foreign_keys_at_newest_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    c = reg.conn
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert c.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"media", "controllers", "attachments", "snapshots", "bandwidth_groups"} <= tables
    assert (tmp_path / db.DB_NAME).stat().st_mode & 0o777 == 0o600


def test_newer_registry_is_refused(tmp_path: Path) -> None:
    Registry(tmp_path).close()
    c = sqlite3.connect(tmp_path / db.DB_NAME)
    c.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    c.close()
    with pytest.raises(ConfigError, match="newer than this blockyard"):
        Registry(tmp_path)


def test_not_a_database_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / db.DB_NAME).write_bytes(b"garbage" * 1000)
    with pytest.raises(ConfigError, match="not a usable registry"):
        Registry(tmp_path)


def test_schema_refuses_dangling_references_and_bad_vocabulary(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(sqlite3.IntegrityError):
        reg.transact(lambda: reg.insert_medium(_medium(1, parent_uuid="nope")))
    with pytest.raises(sqlite3.IntegrityError):
        reg.transact(lambda: reg.insert_medium(_medium(2, write_mode="sloppy")))
    reg.transact(lambda: reg.insert_medium(_medium(3)))
    with pytest.raises(sqlite3.IntegrityError):  # no controller "c"
        reg.transact(lambda: reg.insert_attachment(Attachment("c", 0, _medium(3).uuid, "e")))
    reg.transact(lambda: reg.insert_controller(Controller("c", "ide", 4)))
    reg.transact(lambda: reg.insert_attachment(Attachment("c", 0, _medium(3).uuid, "e")))
    with pytest.raises(sqlite3.IntegrityError):  # attached media cannot be deleted
        reg.transact(lambda: reg.delete_medium(_medium(3).uuid))
    assert reg.integrity() == []


def test_resolve_by_uuid_prefix_location_and_unique_name(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    a = Medium("aaaaaaaa-1111-4111-8111-111111111111", "hdd", "raw", "/one/disk.img")
    b = Medium("bbbbbbbb-2222-4222-8222-222222222222", "hdd", "raw", "/two/disk.img")
    c = Medium("cccccccc-3333-4333-8333-333333333333", "dvd", "iso", "/two/cd.iso")
    for m in (a, b, c):
        reg.transact(lambda m=m: reg.insert_medium(m))
    assert reg.resolve(a.uuid) == a
    assert reg.resolve("bbbbbbbb-22") == b
    assert reg.resolve("/two/disk.img") == b
    assert reg.resolve("cd.iso") == c
    with pytest.raises(ConflictError, match="names 2 media"):
        reg.resolve("disk.img")
    with pytest.raises(NotFoundError):
        reg.resolve("/three/cd.iso")


def test_transaction_waits_out_a_writer_that_holds_the_lock(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    reg = Registry(tmp_path)
    other = sqlite3.connect(tmp_path / db.DB_NAME, isolation_level=None,
                            check_same_thread=False)
    monkeypatch.setattr(db, "RETRY_FOR", 5.0)
    reg.conn.execute("PRAGMA busy_timeout = 10")  # force our retry loop, not SQLite's wait
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, lambda: other.execute("COMMIT")).start()
    t0 = time.monotonic()
    reg.transact(lambda: reg.insert_medium(_medium(7)))
    assert time.monotonic() - t0 >= 0.4
    assert reg.medium(_medium(7).uuid) is not None


def test_busy_for_too_long_is_a_conflict_not_a_traceback(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    reg = Registry(tmp_path)
    other = sqlite3.connect(tmp_path / db.DB_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    reg.conn.execute("PRAGMA busy_timeout = 10")
    monkeypatch.setattr(db, "RETRY_FOR", 0.3)
    with pytest.raises(ConflictError, match="stayed busy"):
        reg.transact(lambda: reg.insert_medium(_medium(8)))
    other.execute("ROLLBACK")
    assert not reg.conn.in_transaction


CRASHER = """
import os, sys
from pathlib import Path
from blockyard.media.registry import Registry
from blockyard.media.model import Medium
reg = Registry(Path(sys.argv[1]))
def m(n):
    return Medium(f"00000000-0000-0000-0000-{n:012d}", "hdd", "raw", f"/x/{n}.img")
for n in range(20):
    reg.transact(lambda n=n: reg.insert_medium(m(n)))
reg.conn.execute("BEGIN IMMEDIATE")
reg.insert_medium(m(99))
print("half", flush=True)
sys.stdin.read()
"""


def test_registry_left_by_a_crash_reopens_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "half\n"
    proc.kill()  # SIGKILL mid-transaction: WAL and shm stay behind
    proc.wait()
    assert (tmp_path / (db.DB_NAME + "-wal")).exists()
    reg = Registry(tmp_path)
    assert len(reg.media()) == 20  # every committed row, not the half-done one
    assert reg.integrity() == []
    reg.transact(lambda: reg.insert_medium(_medium(99)))  # and writable at once
