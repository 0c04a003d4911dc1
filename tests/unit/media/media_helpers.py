"""Small file helpers for the media tests."""

from __future__ import annotations

from pathlib import Path


def raw_file(path: Path, size: int, chunks: dict[int, bytes] | None = None) -> Path:
    """A sparse raw file of ``size`` bytes with ``chunks`` written at their offsets."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in (chunks or {}).items():
            f.seek(off)
            f.write(data)
    return path
