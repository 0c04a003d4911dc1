"""BandwidthGroups: add / set / remove / list / get / sync / wrap."""

from __future__ import annotations

import pytest

from blockyard.block.bandwidth import BandwidthGroups, check_group_name
from blockyard.block.ram import RamDisk
from blockyard.block.throttle import ThrottleLayer
from blockyard.errors import ConfigError, ConflictError, NotFoundError

MiB = 1 << 20


def test_add_get_set_list() -> None:
    groups = BandwidthGroups()
    g = groups.add("Limit", "20M")
    assert groups.get("Limit") is g and g.rate == 20 * MiB and "Limit" in groups
    groups.set("Limit", "10M")
    assert g.rate == 10 * MiB  # the same object: live sessions see the change
    groups.set("Limit", 5 * MiB)  # ints are bytes per second
    groups.add("a-first", 0)
    assert [(i.name, i.limit) for i in groups.list()] == [("Limit", 5 * MiB), ("a-first", 0)]
    assert groups.list()[0].as_dict() == {"name": "Limit", "limit": 5 * MiB, "sessions": 0,
                                          "waiting": 0}


def test_errors_are_one_line_and_typed() -> None:
    groups = BandwidthGroups()
    groups.add("g", "1M")
    with pytest.raises(ConflictError, match="already exists"):
        groups.add("g", "2M")
    with pytest.raises(NotFoundError, match="no bandwidth group named 'nope'"):
        groups.get("nope")
    with pytest.raises(NotFoundError):
        groups.set("nope", "1M")
    with pytest.raises(ConfigError):
        groups.set("g", "-3M")
    with pytest.raises(ConfigError):
        groups.add("bad name", "1M")
    assert groups.get("g").rate == MiB


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "tab\t", "ü"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ConfigError):
        check_group_name(name)


def test_remove_refused_while_media_use_it() -> None:
    groups = BandwidthGroups()
    groups.add("g", "1M")
    with pytest.raises(ConflictError, match="used by: disk1.vdi, disk2.vdi"):
        groups.remove("g", users=["disk2.vdi", "disk1.vdi"])
    with pytest.raises(ConflictError, match="used by: d"):
        groups.remove("g", users=lambda name: ["d"] if name == "g" else [])
    groups.remove("g", users=lambda name: [])
    assert "g" not in groups
    with pytest.raises(NotFoundError):
        groups.remove("g")


async def test_remove_refused_while_sessions_are_attached() -> None:
    groups = BandwidthGroups()
    groups.add("g", "1M")
    layer = groups.wrap(RamDisk(MiB), "g", "client-1")
    assert isinstance(layer, ThrottleLayer)
    with pytest.raises(ConflictError, match="1 session"):
        groups.remove("g")
    await layer.close()
    groups.remove("g")


def test_wrap_without_a_group_is_the_inner_layer() -> None:
    disk = RamDisk(MiB)
    assert BandwidthGroups().wrap(disk, None, "s") is disk
    with pytest.raises(NotFoundError):
        BandwidthGroups().wrap(disk, "missing", "s")


def test_sync_follows_the_registry() -> None:
    groups = BandwidthGroups()
    groups.add("old", "1M")
    kept = groups.add("busy", "1M")
    ThrottleLayer(RamDisk(MiB), kept, "s")
    groups.add("same", "3M")
    same = groups.get("same")
    groups.sync({"same": 4 * MiB, "new": 2 * MiB})
    names = {i.name: i.limit for i in groups.list()}
    assert names == {"same": 4 * MiB, "new": 2 * MiB, "busy": MiB}
    assert groups.get("same") is same
