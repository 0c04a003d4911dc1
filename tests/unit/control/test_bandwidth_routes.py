"""Bandwidth-group routes of the control API, in process: a real ``HttpServer`` on a
unix socket, a registry in a temp dir, a live side holding a ``BandwidthGroups``,
and the CLI's ``RemoteBackend`` / ``RegistryStore`` as clients (on a thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from blockyard.block.bandwidth import BandwidthGroups
from blockyard.cli.bandwidth import RegistryStore
from blockyard.cli.client import RemoteBackend
from blockyard.control.api import Api, error_response, match
from blockyard.control.http import HttpServer
from blockyard.errors import ConfigError, ConflictError, NotFoundError
from blockyard.media.context import Context
from blockyard.media.registry import Registry

MiB = 1 << 20


class FakeLive:
    """The parts of ``LiveServer`` the bandwidth operations use."""

    def __init__(self) -> None:
        self.groups = BandwidthGroups()
        self.moves: list[tuple[str, str | None]] = []

    def open_layer(self, uuid: str) -> None:
        return None

    def regroup(self, uuid: str, name: str | None) -> None:
        self.moves.append((uuid, name))


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Path, FakeLive, Registry]]:
    state = tmp_path / "state"
    reg = Registry(state)
    live = FakeLive()
    http = HttpServer(Api(Context(reg, state, live), {}).handle,  # type: ignore[arg-type]
                      error_response, None)
    await http.listen_unix(str(state / "control.sock"))
    yield state, live, reg
    await http.close()
    reg.close()


async def call(state: Path, op: str, **params: Any) -> Any:
    return await asyncio.to_thread(RemoteBackend(state / "control.sock").call, op, **params)


def test_routes() -> None:
    assert match("GET", ["v1", "bandwidth-groups"]) == ("bandwidth.list", {})
    assert match("PATCH", ["v1", "bandwidth-groups", "g"]) == ("bandwidth.set", {"name": "g"})
    assert match("DELETE", ["v1", "bandwidth-groups", "g"]) == (
        "bandwidth.remove", {"name": "g"})
    assert match("POST", ["v1", "media", "d.img", "bandwidth-group"]) == (
        "media.bandwidth_group", {"ref": "d.img"})


async def test_changes_reach_the_live_groups(api: tuple[Path, FakeLive, Registry]) -> None:
    state, live, reg = api
    store = RegistryStore(state)
    await asyncio.to_thread(store.add, "g", 20 * MiB)
    assert live.groups.get("g").rate == 20 * MiB
    await call(state, "bandwidth.set", name="g", limit="10M")  # VBoxManage text works too
    assert live.groups.get("g").rate == 10 * MiB  # the same object: live sessions follow
    assert await asyncio.to_thread(store.list) == [("g", 10 * MiB)]
    [row] = await call(state, "bandwidth.list")
    assert row["waiting"] == 0 and row["sessions"] == {} and row["media"] == []
    await asyncio.to_thread(store.remove, "g")
    assert "g" not in live.groups and reg.bandwidth_groups() == []


async def test_refusals(api: tuple[Path, FakeLive, Registry], tmp_path: Path) -> None:
    state, live, _ = api
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(MiB))
    m = await call(state, "media.add", path=str(disk))
    await call(state, "bandwidth.add", name="g", limit=MiB)
    with pytest.raises(ConflictError, match="already exists"):
        await call(state, "bandwidth.add", name="g", limit=MiB)
    with pytest.raises(ConfigError, match="means no group"):
        await call(state, "bandwidth.add", name="None", limit=MiB)
    with pytest.raises(ConfigError, match="bad bandwidth group name"):
        await call(state, "bandwidth.add", name="a b", limit=MiB)
    with pytest.raises(NotFoundError, match="no bandwidth group named 'h'"):
        await call(state, "media.bandwidth_group", ref="d.img", group="h")
    moved = await call(state, "media.bandwidth_group", ref="d.img", group="g")
    assert moved["bandwidth_group"] == "g" and live.moves == [(m["uuid"], "g")]
    with pytest.raises(ConflictError, match="is used by: d.img"):
        await call(state, "bandwidth.remove", name="g")
    assert "g" in live.groups
    out = await call(state, "media.bandwidth_group", ref="d.img", group="none")
    assert out["bandwidth_group"] is None and live.moves[-1] == (m["uuid"], None)
    await call(state, "bandwidth.remove", name="g")
    with pytest.raises(NotFoundError):
        await call(state, "bandwidth.set", name="g", limit=0)
