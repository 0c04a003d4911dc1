"""What a target portal knows about its targets and sessions, as plain data.

``TargetPolicy``: one target name with its access list, CHAP credentials
and LUN numbers.  ``PortalConfig``: every policy plus the negotiation
preferences and timers, shared by all connections of a server.
``SessionRegistry``: the live Normal sessions, keyed the way RFC 7143
§6.3.5 wants for session reinstatement (initiator name, ISID, target
name), and the TSIHs in use.  Nothing here does I/O; the registry only
remembers an opaque ``owner`` (the connection) per session so that the
transport can close a session that a new login reinstated.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field

from blockyard.iscsi.chap import ChapCredentials
from blockyard.iscsi.keys import Params, target_preferences
from blockyard.scsi.task import Nexus

SessionKey = tuple[str, int, str]  # (initiator name, ISID, target name)


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """One target as login and discovery see it."""

    name: str
    acl: frozenset[str] | None = None  # None: every initiator may log in
    chap: ChapCredentials | None = None  # the initiator must authenticate with these
    mutual_chap: ChapCredentials | None = None  # we answer a mutual challenge with these
    luns: Container[int] = frozenset({0})
    alias: str = ""

    def admits(self, initiator: str) -> bool:
        return self.acl is None or initiator in self.acl


def _default_prefs() -> tuple[Params, dict[str, tuple[str, ...]]]:
    return target_preferences()


@dataclass(slots=True)
class PortalConfig:
    """Everything the target state machines need to know about this server."""

    targets: Mapping[str, TargetPolicy]
    tpgt: int = 1
    discovery_chap: ChapCredentials | None = None
    discovery_mutual_chap: ChapCredentials | None = None
    preferences: tuple[Params, dict[str, tuple[str, ...]]] = field(
        default_factory=_default_prefs)
    cmd_window: int = 128
    max_write: int = 64 << 20  # largest Expected Data Transfer Length we buffer for a write
    max_write_buffer: int = 256 << 20  # writes held per connection before TASK SET FULL
    nop_interval: float = 30.0  # seconds of silence before a NOP-In ping; 0 disables
    nop_timeout: float = 30.0  # seconds to wait for the ping's answer
    registry: SessionRegistry = field(default_factory=lambda: SessionRegistry())


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A logged-in session as the transport sees it (LoginComplete)."""

    initiator_name: str
    target_name: str  # "" for a Discovery session
    isid: int
    tsih: int
    cid: int
    discovery: bool
    params: Params
    tpgt: int = 1

    @property
    def nexus(self) -> Nexus:
        """The I_T nexus names of SAM / RFC 7143 §4.2.7 (see scsi/task.py)."""
        return Nexus(f"{self.initiator_name},i,0x{self.isid:012x}",
                     f"{self.target_name},t,0x{self.tpgt:04x}")


class SessionRegistry:
    """Live Normal sessions by reinstatement key and by TSIH (§6.3.5)."""

    def __init__(self) -> None:
        self._by_key: dict[SessionKey, tuple[int, object]] = {}
        self._owner_key: dict[int, SessionKey] = {}  # id(owner) -> key
        self._tsihs: set[int] = set()
        self._next = 1

    def open(self, key: SessionKey, owner: object) -> tuple[int, object | None]:
        """Register a new session; return its TSIH and the owner it reinstates, if any."""
        replaced = None
        old = self._by_key.pop(key, None)
        if old is not None:
            self._tsihs.discard(old[0])
            self._owner_key.pop(id(old[1]), None)
            replaced = old[1]
        tsih = self._allocate()
        self._by_key[key] = (tsih, owner)
        self._owner_key[id(owner)] = key
        return tsih, replaced

    def close(self, owner: object) -> None:
        key = self._owner_key.pop(id(owner), None)
        if key is not None:
            entry = self._by_key.pop(key, None)
            if entry is not None:
                self._tsihs.discard(entry[0])

    def has_tsih(self, tsih: int) -> bool:
        return tsih in self._tsihs

    def sessions(self) -> list[tuple[SessionKey, int]]:
        return [(k, v[0]) for k, v in self._by_key.items()]

    def _allocate(self) -> int:
        for _ in range(65535):
            tsih = self._next
            self._next = self._next % 65535 + 1  # TSIH 0 is reserved (§11.12.6)
            if tsih not in self._tsihs:
                self._tsihs.add(tsih)
                return tsih
        raise RuntimeError("no free TSIH")  # 65535 live sessions
