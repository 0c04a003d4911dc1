"""The shared/exclusive gate; and the import rules of the scsi package."""

from __future__ import annotations

import ast
import asyncio
import pathlib

import pytest

from blockyard.scsi.gate import IoGate


async def test_exclusive_waits_for_shared_and_blocks_later_shared() -> None:
    gate, log = IoGate(), []
    release = asyncio.Event()

    async def shared(name: str, hold: bool) -> None:
        async with gate.shared():
            log.append(f"{name}+")
            if hold:
                await release.wait()
            log.append(f"{name}-")

    async def exclusive() -> None:
        async with gate.exclusive():
            log.append("X+")
            await asyncio.sleep(0)
            log.append("X-")

    t1 = asyncio.create_task(shared("a", True))
    await asyncio.sleep(0)
    tx = asyncio.create_task(exclusive())
    await asyncio.sleep(0)
    t2 = asyncio.create_task(shared("b", False))
    await asyncio.sleep(0)
    assert log == ["a+"]
    release.set()
    await asyncio.gather(t1, tx, t2)
    assert log == ["a+", "a-", "X+", "X-", "b+", "b-"]


async def test_cancelled_waiter_does_not_wedge_the_gate() -> None:
    gate = IoGate()
    async with gate.exclusive():
        waiter = asyncio.create_task(gate.exclusive().__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    async with gate.shared():
        pass
    async with gate.exclusive():
        pass


SCSI = pathlib.Path(__file__).parents[3] / "src" / "blockyard" / "scsi"
FORBIDDEN_TOP = ("asyncio", "socket", "time", "blockyard.transport", "blockyard.media",
                 "blockyard.iscsi", "blockyard.nbd")


@pytest.mark.parametrize("path", sorted(SCSI.glob("*.py")), ids=lambda p: p.name)
def test_module_level_imports(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            assert not name.startswith(FORBIDDEN_TOP), f"{path.name} imports {name}"
            if name.startswith("blockyard.block"):
                assert name == "blockyard.block.layer", f"{path.name} imports {name}"
