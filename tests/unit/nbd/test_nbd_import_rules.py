"""architecture.md §2/§3: the sans-IO NBD core imports nothing from block, media
or transport, nor asyncio, socket or time."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import blockyard.nbd

NBD_DIR = Path(blockyard.nbd.__file__).parent
FORBIDDEN = ("blockyard.block", "blockyard.media", "blockyard.transport", "asyncio",
             "socket", "time", "selectors", "threading")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


@pytest.mark.parametrize("path", sorted(NBD_DIR.glob("*.py")), ids=lambda p: p.name)
def test_nbd_core_imports(path: Path) -> None:
    bad = {m for m in imported_modules(path)
           if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import asyncio\nfrom blockyard.transport import nbd_server\n")
    assert imported_modules(probe) == {"asyncio", "blockyard.transport"}
