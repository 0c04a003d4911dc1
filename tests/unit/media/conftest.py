"""Fixtures for the media tests: a registry in a temp state dir, an operation context."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from blockyard.media.context import Context
from blockyard.media.registry import Registry


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[Context]:
    state = tmp_path / "state"
    reg = Registry(state)
    yield Context(reg, state)
    assert reg.integrity() == []
    reg.close()

