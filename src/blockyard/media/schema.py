"""The registry's schema as a list of migrations, applied by ``PRAGMA user_version``.

``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``.  Append,
never edit: a database made by an older blockyard is brought forward on open
(``db.migrate``), inside one ``BEGIN IMMEDIATE`` transaction, so two processes
opening a fresh registry at once cannot both create the tables.  A database
whose version is newer than this code knows is refused (an older blockyard
must not scribble on a newer layout).

Referential rules live in the schema, not in the code: an attachment's
medium and controller must exist (``ON DELETE RESTRICT``), a child's parent
must exist, and the vocabularies are ``CHECK`` constraints, so a bug above
cannot leave the file inconsistent.
"""

from __future__ import annotations

V1 = """
CREATE TABLE media (
    uuid            TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('hdd', 'dvd', 'floppy')),
    format          TEXT NOT NULL,
    location        TEXT NOT NULL UNIQUE,
    parent_uuid     TEXT REFERENCES media(uuid) ON DELETE RESTRICT,
    write_mode      TEXT NOT NULL DEFAULT 'normal' CHECK (write_mode IN
                    ('normal', 'writethrough', 'shareable', 'immutable', 'multiattach',
                     'readonly')),
    description     TEXT NOT NULL DEFAULT '',
    virtual_size    INTEGER NOT NULL DEFAULT 0 CHECK (virtual_size >= 0),
    allocated_size  INTEGER NOT NULL DEFAULT 0 CHECK (allocated_size >= 0),
    autoreset       INTEGER NOT NULL DEFAULT 1,
    bandwidth_group TEXT,
    accessible      INTEGER NOT NULL DEFAULT 1,
    last_error      TEXT NOT NULL DEFAULT '',
    uuid_source     TEXT NOT NULL DEFAULT 'image' CHECK (uuid_source IN ('image', 'registry')),
    added_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);
CREATE INDEX media_parent ON media(parent_uuid);

CREATE TABLE controllers (
    name       TEXT PRIMARY KEY,
    type       TEXT NOT NULL CHECK (type IN
               ('ide', 'sata', 'scsi', 'sas', 'usb', 'nvme', 'virtio-scsi')),
    slots      INTEGER NOT NULL CHECK (slots > 0),
    host_cache INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE attachments (
    controller  TEXT NOT NULL REFERENCES controllers(name) ON DELETE RESTRICT,
    port        INTEGER NOT NULL CHECK (port >= 0),
    medium_uuid TEXT NOT NULL REFERENCES media(uuid) ON DELETE RESTRICT ON UPDATE CASCADE,
    export_name TEXT NOT NULL UNIQUE,
    PRIMARY KEY (controller, port)
);
CREATE INDEX attachments_medium ON attachments(medium_uuid);

-- Snapshot logic is another capability; the table is here so the schema is whole.
CREATE TABLE snapshots (
    uuid        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    parent      TEXT REFERENCES snapshots(uuid) ON DELETE RESTRICT,
    medium_uuid TEXT NOT NULL REFERENCES media(uuid) ON DELETE RESTRICT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
);

-- The limiter is another capability; names and limits live here.
CREATE TABLE bandwidth_groups (
    name      TEXT PRIMARY KEY,
    limit_bps INTEGER NOT NULL CHECK (limit_bps >= 0)
);
"""

MIGRATIONS: list[str] = [V1]
