"""Snapshots in the registry: rows, the image tree of a disk, its current state.

The model is VirtualBox's (user manual §5.5, "Differencing images"), per
medium instead of per machine:

* a *disk* is a registered medium the user names (its *root*); taking a
  snapshot freezes the image the disk is written through now (its *current
  state*) and starts a new differencing image on top of it;
* a ``snapshots`` row records one snapshot: ``medium_uuid`` is the frozen
  image that holds the disk as it was when the snapshot was taken,
  ``parent`` the snapshot it was taken after (a tree: restoring an older
  snapshot and taking a new one branches it);
* the differencing images snapshots make are *managed*: registered media
  (children of the image they were made on), stored like VirtualBox's as
  ``<root's directory>/Snapshots/{uuid}.<format>`` -- that name is how one is
  told apart from a child the user made; a remote LUN has no directory, so
  its snapshots' images live under ``STATE/remote/<LUN uuid>/Snapshots/``;
* the current state is the root while the disk has no snapshots, else the
  one managed image that has no children and holds no snapshot.

Attachments follow the current state (as a VirtualBox machine's do), so
the daemon serves the image clients must write.  Everything here is plain
SQL and registry reads; the operations are in ``snapshots.py``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from blockyard.block.remote import REMOTE_FORMAT
from blockyard.errors import ConflictError, NotFoundError
from blockyard.media.model import Medium
from blockyard.media.registry import Registry

FOLDER = "Snapshots"


@dataclass
class Snapshot:
    uuid: str
    name: str
    description: str
    parent: str | None
    medium_uuid: str
    created_at: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _row(r: sqlite3.Row) -> Snapshot:
    return Snapshot(r["uuid"], r["name"], r["description"], r["parent"], r["medium_uuid"],
                    r["created_at"])


def snapshot_dir(root: Medium, state_dir: Path) -> Path:
    """Beside the root's file; for a remote LUN, ``STATE/remote/<root uuid>/Snapshots``."""
    if root.format == REMOTE_FORMAT:
        return state_dir / "remote" / root.uuid / FOLDER
    return Path(root.location).parent / FOLDER


def is_managed(m: Medium) -> bool:
    """A differencing image made by a snapshot (``Snapshots/{uuid}.<format>``)."""
    p = Path(m.location)
    return m.parent_uuid is not None and p.parent.name == FOLDER and p.stem == m.uuid


def disk_root(reg: Registry, m: Medium) -> Medium:
    """The disk a medium belongs to: up the parents while they are managed images."""
    seen = {m.uuid}
    while is_managed(m):
        assert m.parent_uuid is not None
        parent = reg.medium(m.parent_uuid)
        if parent is None or parent.uuid in seen:
            break
        seen.add(parent.uuid)
        m = parent
    return m


def tree(reg: Registry, root: Medium) -> list[Medium]:
    """The root and every managed image below it (breadth first)."""
    out, queue = [root], [root]
    while queue:
        for kid in reg.children(queue.pop(0).uuid):
            if is_managed(kid) and kid not in out:
                out.append(kid)
                queue.append(kid)
    return out


def rows_for(reg: Registry, media: list[Medium]) -> list[Snapshot]:
    if not media:
        return []
    marks = ", ".join("?" for _ in media)
    rows = reg.conn.execute(
        f"SELECT * FROM snapshots WHERE medium_uuid IN ({marks}) ORDER BY created_at, rowid",
        [m.uuid for m in media]).fetchall()
    return [_row(r) for r in rows]


def current_state(reg: Registry, root: Medium, media: list[Medium],
                  snaps: list[Snapshot]) -> Medium:
    if not snaps:
        return root
    frozen = {s.medium_uuid for s in snaps}
    leaves = [m for m in media[1:] if m.uuid not in frozen and not reg.children(m.uuid)]
    if len(leaves) != 1:
        raise ConflictError(f"{root.name}: its snapshot images are inconsistent "
                            f"({len(leaves)} current states); list them with 'blockyard "
                            "medium list --tree' and remove the stray ones")
    return leaves[0]


@dataclass
class Disk:
    """A disk's snapshot picture, read in one go."""

    root: Medium
    media: list[Medium]
    snaps: list[Snapshot]
    current: Medium

    @property
    def current_snapshot(self) -> Snapshot | None:
        """The snapshot the current state was started on (None without snapshots)."""
        return next((s for s in self.snaps if s.medium_uuid == self.current.parent_uuid), None)

    def find(self, ref: str) -> Snapshot:
        """A snapshot by UUID, unique UUID prefix (8+) or unique name."""
        exact = [s for s in self.snaps if s.uuid == ref]
        found = exact or [s for s in self.snaps if s.name == ref] or (
            [s for s in self.snaps if s.uuid.startswith(ref)] if len(ref) >= 8 else [])
        if len(found) == 1:
            return found[0]
        if found:
            raise ConflictError(f"{self.root.name}: {len(found)} snapshots are named {ref!r}; "
                                "use its UUID")
        raise NotFoundError(f"{self.root.name} has no snapshot {ref!r} "
                            f"(see 'blockyard snapshot list {self.root.name}')")


def load(reg: Registry, m: Medium) -> Disk:
    root = disk_root(reg, m)
    media = tree(reg, root)
    snaps = rows_for(reg, media)
    return Disk(root, media, snaps, current_state(reg, root, media, snaps))


# ---- writes (inside Registry.transact) ----------------------------------------------------
def insert(reg: Registry, s: Snapshot) -> None:
    reg.conn.execute("INSERT INTO snapshots (uuid, name, description, parent, medium_uuid) "
                     "VALUES (?, ?, ?, ?, ?)",
                     (s.uuid, s.name, s.description, s.parent, s.medium_uuid))


def delete(reg: Registry, uuid: str) -> None:
    reg.conn.execute("DELETE FROM snapshots WHERE uuid = ?", (uuid,))


def reparent_children(reg: Registry, uuid: str, parent: str | None) -> None:
    reg.conn.execute("UPDATE snapshots SET parent = ? WHERE parent = ?", (parent, uuid))


def move_image(reg: Registry, old: str, new: str) -> None:
    """Snapshots held by image ``old`` are held by ``new`` now (a merge)."""
    reg.conn.execute("UPDATE snapshots SET medium_uuid = ? WHERE medium_uuid = ?", (new, old))


def move_attachments(reg: Registry, old: str, new: str) -> None:
    """Attachments follow the current state from image ``old`` to ``new``."""
    reg.conn.execute("UPDATE attachments SET medium_uuid = ? WHERE medium_uuid = ?", (new, old))


def reparent_media(reg: Registry, old: str, new: str) -> None:
    reg.conn.execute("UPDATE media SET parent_uuid = ? WHERE parent_uuid = ?", (new, old))
