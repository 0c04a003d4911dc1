"""The registry's SQL: rows in, dataclasses out.

``Registry`` wraps one connection (``db.connect``) and offers reads that
return ``model`` dataclasses and writes that must run inside
``Registry.transact(fn)`` (``BEGIN IMMEDIATE``, retried while busy; see
``db``).  It knows nothing about image files: probing, creating and moving
files is ``ops``'s job, which calls this module for the bookkeeping.

A medium is named on the command line by UUID (or a unique UUID prefix of
at least 8 characters), by its location (an absolute path), or by its file
name when only one medium has that name -- the order VirtualBox's
``VBoxManage`` tries them.  ``resolve`` does that and says which media an
ambiguous name could mean.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from blockyard.errors import ConflictError, NotFoundError
from blockyard.media import db
from blockyard.media.model import Attachment, Controller, Medium

T = TypeVar("T")
_MEDIUM_COLUMNS = [f.name for f in fields(Medium)]


def _medium(row: sqlite3.Row) -> Medium:
    values = {k: row[k] for k in _MEDIUM_COLUMNS}
    for k in ("autoreset", "accessible"):
        values[k] = bool(values[k])
    return Medium(**values)


def _controller(row: sqlite3.Row) -> Controller:
    return Controller(row["name"], row["type"], row["slots"], bool(row["host_cache"]))


def _attachment(row: sqlite3.Row) -> Attachment:
    return Attachment(row["controller"], row["port"], row["medium_uuid"], row["export_name"])


class Registry:
    """The media registry of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.conn = db.connect(state_dir)

    def close(self) -> None:
        self.conn.close()

    def transact(self, fn: Callable[[], T]) -> T:
        return db.transact(self.conn, lambda _c: fn())

    def _all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        return list(self.conn.execute(sql, args).fetchall())

    # ---- media: reads ---------------------------------------------------------------
    def media(self, kind: str | None = None) -> list[Medium]:
        if kind:
            rows = self._all("SELECT * FROM media WHERE kind = ? ORDER BY location", kind)
        else:
            rows = self._all("SELECT * FROM media ORDER BY kind, location")
        return [_medium(r) for r in rows]

    def medium(self, uuid: str) -> Medium | None:
        rows = self._all("SELECT * FROM media WHERE uuid = ?", uuid)
        return _medium(rows[0]) if rows else None

    def by_location(self, location: str) -> Medium | None:
        rows = self._all("SELECT * FROM media WHERE location = ?", location)
        return _medium(rows[0]) if rows else None

    def children(self, uuid: str) -> list[Medium]:
        rows = self._all("SELECT * FROM media WHERE parent_uuid = ? ORDER BY location", uuid)
        return [_medium(r) for r in rows]

    def search(self, text: str) -> list[Medium]:
        """Media whose name, location, UUID or description contains ``text``."""
        like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._all(
            "SELECT * FROM media WHERE location LIKE ?1 ESCAPE '\\' OR uuid LIKE ?1 ESCAPE '\\'"
            " OR description LIKE ?1 ESCAPE '\\' ORDER BY location", like)
        return [_medium(r) for r in rows]

    def resolve(self, ref: str) -> Medium:
        """A medium by UUID, UUID prefix, location or unique file name."""
        found = self.medium(ref) or self.by_location(ref)
        if found:
            return found
        candidates: list[Medium] = []
        if len(ref) >= 8 and "/" not in ref:
            candidates = [_medium(r) for r in self._all(
                "SELECT * FROM media WHERE uuid LIKE ? ESCAPE '\\'", ref.replace("_", "\\_") + "%")]
        if not candidates:
            name = ref.rsplit("/", 1)[-1]
            candidates = [m for m in self.media() if m.name == name]
            if "/" in ref:  # a path that is not registered is not a name
                candidates = []
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            where = ", ".join(f"{m.location} ({m.uuid})" for m in candidates)
            raise ConflictError(f"{ref!r} names {len(candidates)} media: {where}; use a UUID")
        raise NotFoundError(f"no medium {ref!r} in the registry")

    # ---- media: writes (inside transact) ------------------------------------------------
    def insert_medium(self, m: Medium) -> None:
        cols = ", ".join(_MEDIUM_COLUMNS)
        marks = ", ".join("?" for _ in _MEDIUM_COLUMNS)
        self.conn.execute(f"INSERT INTO media ({cols}) VALUES ({marks})",
                          [getattr(m, k) for k in _MEDIUM_COLUMNS])

    def update_medium(self, uuid: str, **changes: Any) -> None:
        bad = set(changes) - set(_MEDIUM_COLUMNS)
        if bad:
            raise ValueError(f"not medium columns: {bad}")
        sets = ", ".join(f"{k} = ?" for k in changes)
        self.conn.execute(f"UPDATE media SET {sets} WHERE uuid = ?", [*changes.values(), uuid])

    def delete_medium(self, uuid: str) -> None:
        self.conn.execute("DELETE FROM media WHERE uuid = ?", (uuid,))

    # ---- controllers -------------------------------------------------------------------------
    def controllers(self) -> list[Controller]:
        return [_controller(r) for r in self._all("SELECT * FROM controllers ORDER BY name")]

    def controller(self, name: str) -> Controller:
        rows = self._all("SELECT * FROM controllers WHERE name = ?", name)
        if not rows:
            raise NotFoundError(f"no controller {name!r}")
        return _controller(rows[0])

    def insert_controller(self, c: Controller) -> None:
        self.conn.execute("INSERT INTO controllers (name, type, slots, host_cache) "
                          "VALUES (?, ?, ?, ?)", (c.name, c.type, c.slots, int(c.host_cache)))

    def delete_controller(self, name: str) -> None:
        self.conn.execute("DELETE FROM controllers WHERE name = ?", (name,))

    # ---- attachments -----------------------------------------------------------------------
    def attachments(self, *, medium: str | None = None,
                    controller: str | None = None) -> list[Attachment]:
        sql, args = "SELECT * FROM attachments", []
        where = []
        if medium is not None:
            where.append("medium_uuid = ?")
            args.append(medium)
        if controller is not None:
            where.append("controller = ?")
            args.append(controller)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_attachment(r) for r in self._all(sql + " ORDER BY controller, port", *args)]

    def attachment(self, controller: str, port: int) -> Attachment | None:
        rows = self._all("SELECT * FROM attachments WHERE controller = ? AND port = ?",
                         controller, port)
        return _attachment(rows[0]) if rows else None

    def by_export(self, name: str) -> Attachment | None:
        rows = self._all("SELECT * FROM attachments WHERE export_name = ?", name)
        return _attachment(rows[0]) if rows else None

    def insert_attachment(self, a: Attachment) -> None:
        self.conn.execute("INSERT INTO attachments (controller, port, medium_uuid, export_name) "
                          "VALUES (?, ?, ?, ?)", (a.controller, a.port, a.medium_uuid,
                                                  a.export_name))

    def delete_attachment(self, controller: str, port: int) -> None:
        self.conn.execute("DELETE FROM attachments WHERE controller = ? AND port = ?",
                          (controller, port))

    # ---- bandwidth groups (writes inside transact) ------------------------------------------
    def bandwidth_groups(self) -> list[tuple[str, int]]:
        """``(name, bytes per second)`` of every group, by name; 0 = unlimited."""
        rows = self._all("SELECT name, limit_bps FROM bandwidth_groups ORDER BY name")
        return [(r["name"], r["limit_bps"]) for r in rows]

    def bandwidth_group(self, name: str) -> int:
        rows = self._all("SELECT limit_bps FROM bandwidth_groups WHERE name = ?", name)
        if not rows:
            raise NotFoundError(f"no bandwidth group named {name!r}")
        return int(rows[0]["limit_bps"])

    def group_users(self, name: str) -> list[Medium]:
        """The media in bandwidth group ``name``."""
        rows = self._all("SELECT * FROM media WHERE bandwidth_group = ? ORDER BY location", name)
        return [_medium(r) for r in rows]

    def put_bandwidth_group(self, name: str, limit: int) -> None:
        self.conn.execute("INSERT INTO bandwidth_groups (name, limit_bps) VALUES (?, ?) "
                          "ON CONFLICT (name) DO UPDATE SET limit_bps = excluded.limit_bps",
                          (name, limit))

    def delete_bandwidth_group(self, name: str) -> None:
        self.conn.execute("DELETE FROM bandwidth_groups WHERE name = ?", (name,))

    # ---- consistency --------------------------------------------------------------------------
    def integrity(self) -> list[str]:
        """Problems SQLite finds (``integrity_check`` + ``foreign_key_check``); [] when sound."""
        out = [r[0] for r in self._all("PRAGMA integrity_check") if r[0] != "ok"]
        out += [f"dangling reference in {r[0]} row {r[1]} to {r[2]}"
                for r in self._all("PRAGMA foreign_key_check")]
        return out
