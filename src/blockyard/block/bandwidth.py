"""``BandwidthGroups``: the named bandwidth groups of a running server.

VirtualBox's bandwidth groups (manual 5.8) are named limits shared by several
disk images, changed while the machine runs.  Here one ``BandwidthGroups``
object per server owns the live ``ThrottleGroup`` objects; every session of
every medium in a group, NBD or iSCSI, is charged to the same object, so the
sum of their traffic stays under the limit and ``set`` reaches them all at
once.

* ``add(name, limit)``, ``set(name, limit)``: limits are bytes per second
  (``int``, 0 = unlimited) or VBoxManage text (``"20M"``, see
  ``util.limits``);
* ``remove(name, users=...)``: refused with ``ConflictError`` while media use
  the group (the caller passes their names, or a callable returning them, e.g.
  the registry's query) or sessions are still attached;
* ``get(name)`` raises ``NotFoundError``; ``list()`` returns ``GroupInfo``;
* ``wrap(inner, name_or_None, session_key)`` puts a ``ThrottleLayer`` on top
  of a session's stack (or returns ``inner`` unchanged for no group).

The registry stays the source of truth for what groups exist; ``sync`` makes
the live set match a ``{name: rate}`` mapping read from it.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from blockyard.block.layer import Layer
from blockyard.block.throttle import ThrottleGroup, ThrottleLayer
from blockyard.errors import ConfigError, ConflictError, NotFoundError
from blockyard.util.limits import check_rate, parse_limit

Users = Iterable[str] | Callable[[str], Iterable[str]] | None
_NAME_CHARS = set(string.ascii_letters + string.digits + "._-+@:")


@dataclass(frozen=True)
class GroupInfo:
    name: str
    limit: int  # bytes per second, 0 = unlimited
    sessions: int
    waiting: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "limit": self.limit, "sessions": self.sessions,
                "waiting": self.waiting}


def check_group_name(name: str) -> str:
    """A group name: 1-64 characters, letters, digits and ``._-+@:``."""
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise ConfigError(f"bad bandwidth group name {name!r}: use 1-64 letters, digits "
                          "and ._-+@:")
    return name


def as_rate(limit: int | str) -> int:
    """Bytes per second from an int (already bytes/s) or VBoxManage text."""
    return check_rate(limit) if isinstance(limit, int) else parse_limit(limit)


class BandwidthGroups:
    def __init__(self, **group_options: Any) -> None:
        self._groups: dict[str, ThrottleGroup] = {}
        self._options = group_options  # clock / call_later / quantum, for tests

    def add(self, name: str, limit: int | str) -> ThrottleGroup:
        check_group_name(name)
        if name in self._groups:
            raise ConflictError(f"bandwidth group {name!r} already exists")
        group = ThrottleGroup(name, as_rate(limit), **self._options)
        self._groups[name] = group
        return group

    def set(self, name: str, limit: int | str) -> None:
        self.get(name).set(as_rate(limit))

    def get(self, name: str) -> ThrottleGroup:
        try:
            return self._groups[name]
        except KeyError:
            raise NotFoundError(f"no bandwidth group named {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._groups

    def remove(self, name: str, users: Users = None) -> None:
        group = self.get(name)
        names = sorted(users(name) if callable(users) else (users or []))
        if names:
            raise ConflictError(f"bandwidth group {name!r} is used by: {', '.join(names)}")
        if group.sessions:
            raise ConflictError(f"bandwidth group {name!r} still has "
                                f"{len(group.sessions)} session(s) attached")
        del self._groups[name]

    def list(self) -> list[GroupInfo]:
        return [GroupInfo(g.name, g.rate, len(g.sessions), g.waiting)
                for g in sorted(self._groups.values(), key=lambda g: g.name)]

    def sync(self, wanted: Mapping[str, int]) -> None:
        """Add, re-limit and drop groups so the live set matches ``wanted``.

        Groups that still have sessions are kept (and reported by ``list``)
        even if ``wanted`` no longer names them.
        """
        for name, rate in wanted.items():
            if name in self._groups:
                if self._groups[name].rate != rate:
                    self._groups[name].set(rate)
            else:
                self.add(name, rate)
        for name in [n for n in self._groups if n not in wanted]:
            if not self._groups[name].sessions:
                del self._groups[name]

    def wrap(self, inner: Layer, name: str | None, session_key: Hashable, *,
             owns_inner: bool = False) -> Layer:
        """The session's top layer: ``ThrottleLayer`` over ``inner``, or ``inner``."""
        if name is None:
            return inner
        return ThrottleLayer(inner, self.get(name), session_key, owns_inner=owns_inner)
