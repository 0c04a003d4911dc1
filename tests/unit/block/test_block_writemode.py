import pytest

from blockyard.block.layer import Layer
from blockyard.block.ram import RamDisk
from blockyard.block.writemode import MediumHub, PolicyError
from blockyard.errors import BlockError, MediaError


async def test_normal_admits_one_client_and_its_other_connections() -> None:
    hub = MediumHub("disk", RamDisk(4096))
    a1 = await hub.acquire("10.0.0.1")
    a2 = await hub.acquire("10.0.0.1")  # multi-conn from the same client
    assert a1 is a2 is hub.base
    with pytest.raises(PolicyError, match="in use by 10.0.0.1"):
        await hub.acquire("10.0.0.2")
    await hub.release("10.0.0.1")
    with pytest.raises(PolicyError):
        await hub.acquire("10.0.0.2")
    await hub.release("10.0.0.1")
    assert await hub.acquire("10.0.0.2") is hub.base


async def test_shareable_admits_everyone_and_needs_fixed_size() -> None:
    hub = MediumHub("disk", RamDisk(4096), mode="shareable")
    assert await hub.acquire("a") is await hub.acquire("b")
    assert hub.multi_conn
    with pytest.raises(MediaError, match="fixed-size"):
        MediumHub("disk", RamDisk(4096), mode="shareable", fixed_size=False)


async def test_readonly_refuses_writes() -> None:
    hub = MediumHub("disk", RamDisk(4096), mode="readonly")
    view = await hub.acquire("a")
    with pytest.raises(BlockError):
        await view.pwrite(0, b"x")


async def test_immutable_gives_each_client_its_own_layer_and_resets() -> None:
    base = RamDisk(4096)
    calls: list[tuple[str, bool]] = []

    async def factory(client: str, reset: bool) -> Layer:
        calls.append((client, reset))
        return RamDisk(4096)

    hub = MediumHub("disk", base, mode="immutable", diff_factory=factory)
    a, b = await hub.acquire("a"), await hub.acquire("b")
    assert a is not b and base not in (a, b)
    await a.pwrite(0, b"x")
    assert await base.pread(0, 1) == b"\0"
    await hub.release("a")
    await hub.acquire("a")
    assert calls == [("a", True), ("b", True), ("a", True)]


async def test_multiattach_keeps_images() -> None:
    seen: list[bool] = []

    async def factory(client: str, reset: bool) -> Layer:
        seen.append(reset)
        return RamDisk(4096)

    hub = MediumHub("disk", RamDisk(4096), mode="multiattach", diff_factory=factory)
    await hub.acquire("a")
    assert seen == [False]


def test_unknown_mode_refused() -> None:
    with pytest.raises(MediaError, match="unknown write mode"):
        MediumHub("disk", RamDisk(4096), mode="sometimes")


async def test_a_new_session_waits_for_the_old_image_to_close() -> None:
    import asyncio

    closing = asyncio.Event()
    order: list[str] = []

    class SlowClose(RamDisk):
        async def _close(self) -> None:
            order.append("close-start")
            await closing.wait()
            order.append("close-end")

    async def factory(client: str, reset: bool) -> Layer:
        order.append(f"open-{reset}")
        return SlowClose(4096)

    hub = MediumHub("disk", RamDisk(4096), mode="immutable", diff_factory=factory)
    await hub.acquire("a")
    release = asyncio.create_task(hub.release("a"))
    await asyncio.sleep(0)
    reopen = asyncio.create_task(hub.acquire("a"))
    await asyncio.sleep(0.01)
    assert order == ["open-True", "close-start"]  # the reset waits for the close
    closing.set()
    await release
    await reopen
    assert order == ["open-True", "close-start", "close-end", "open-True"]
