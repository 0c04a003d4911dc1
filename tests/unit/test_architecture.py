"""Import rules from the architecture (§2): sans-IO cores stay pure, and the
embedded default configuration is the one in configs/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "blockyard"
PURE = ["nbd", "iscsi", "scsi"]
FORBIDDEN_PURE = {"asyncio", "socket", "time", "blockyard.block", "blockyard.media",
                  "blockyard.transport", "selectors", "threading"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _violations(pkg: str, forbidden: set[str], allow: set[str] = frozenset()) -> list[str]:
    bad = []
    for path in sorted((SRC / pkg).rglob("*.py")):
        for name in _imports(path):
            for f in forbidden:
                if (name == f or name.startswith(f + ".")) and path.name not in allow:
                    bad.append(f"{path.relative_to(SRC)} imports {name}")
    return bad


@pytest.mark.parametrize("pkg", ["nbd", "iscsi"])
def test_protocol_cores_are_sans_io(pkg: str) -> None:
    assert _violations(pkg, FORBIDDEN_PURE) == []


def test_scsi_does_not_reach_into_transport_or_media() -> None:
    # SCSI handlers await block layers, so block is allowed there.
    assert _violations("scsi", {"socket", "blockyard.transport", "blockyard.media"}) == []


def test_block_never_imports_transport() -> None:
    assert _violations("block", {"blockyard.transport"}) == []


def test_embedded_default_matches_configs() -> None:
    packaged = (SRC / "defaults" / "blockyard.toml").read_text()
    assert packaged == (ROOT / "configs" / "blockyard.toml").read_text()
