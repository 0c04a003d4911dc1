"""Fixtures for the VDI/VHD driver tests: external tools, file snapshots, a raw model."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class FileState:
    data: bytes
    mtime_ns: int


@pytest.fixture
def snapshot() -> Callable[[str | Path], FileState]:
    """``snapshot(path)``: the file's bytes and mtime, to prove nothing was written."""
    def take(path: str | Path) -> FileState:
        return FileState(Path(path).read_bytes(), os.stat(path).st_mtime_ns)
    return take


@pytest.fixture
def qemu_img(require_tool: Callable[[str], str]) -> str:
    return require_tool("qemu-img")
