"""Write modes: how one open medium is shared among client sessions.

VirtualBox decides a disk's write mode when a VM attaches it (user manual
§5.4); blockyard decides it when a session opens a medium.  One
``MediumHub`` exists per open medium and is shared by every session on both
protocols, so an NBD and an iSCSI client of the same medium see the same
bytes and the same rules:

=============  ==============================================================
normal         one client holds the medium; others are refused (PolicyError)
writethrough   like normal for sessions (snapshots skip it: the registry's job)
shareable      any number of clients write the same image (fixed-size only)
immutable      the base is never written; each client writes to its own
               differencing image, reset when that client's next session starts
               (unless autoreset is off)
multiattach    like immutable, but each client's image persists across sessions
readonly       writes refused (NBD read-only flag; SCSI write protect)
=============  ==============================================================

A *client* is an identity, not a connection: the iSCSI initiator name, or for
NBD the TLS identity, else the peer address without the port.  Several
connections of one client (NBD multi-conn) share its session.

Theory of operation: ``acquire(client)`` returns the layer that client's
session must use and counts the connection; ``release(client)`` undoes one
acquire.  For immutable and multiattach the per-client layer comes from
``diff_factory(client, reset)`` -- a callable supplied by the media builder
that opens (or, with ``reset``, recreates) the client's differencing image
over the base; the hub keeps it open while that client has connections.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from blockyard.block.layer import Layer
from blockyard.errors import BlockyardError, MediaError

MODES = ("normal", "writethrough", "shareable", "immutable", "multiattach", "readonly")

DiffFactory = Callable[[str, bool], Awaitable[Layer]]


class PolicyError(BlockyardError):
    """A session is refused by the medium's write mode (NBD: NBD_REP_ERR_POLICY)."""

    exit_status = 6


class ReadOnlyView(Layer):
    """The same medium, refusing writes (for readonly mode)."""

    def __init__(self, inner: Layer) -> None:
        super().__init__(inner)
        self.read_only = True
        self.sync_pread = inner.sync_pread
        self.sendfile_fd = inner.sendfile_fd


@dataclass
class _Client:
    layer: Layer
    connections: int = 0


@dataclass
class MediumHub:
    name: str
    base: Layer
    mode: str = "normal"
    autoreset: bool = True
    fixed_size: bool = True  # shareable needs a fixed-size image
    diff_factory: DiffFactory | None = None
    _clients: dict[str, _Client] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _closing: dict[str, asyncio.Event] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MediaError(f"{self.name}: unknown write mode {self.mode!r} "
                             f"(one of {', '.join(MODES)})")
        if self.mode == "shareable" and not self.fixed_size:
            raise MediaError(f"{self.name}: only fixed-size images may be shareable; "
                             "convert it with 'blockyard medium clone --variant fixed'")
        if self.mode in ("immutable", "multiattach") and self.diff_factory is None:
            raise MediaError(f"{self.name}: {self.mode} needs differencing images, "
                             "which this medium cannot have here")

    @property
    def holders(self) -> list[str]:
        return list(self._clients)

    @property
    def multi_conn(self) -> bool:
        """Several clients may write at once and see each other (NBD CAN_MULTI_CONN)."""
        return self.mode in ("shareable", "readonly") and self.base.can_multi_conn

    async def acquire(self, client: str) -> Layer:
        closing = self._closing.get(client)
        if closing is not None:  # its previous session's image is still being closed
            await closing.wait()
        entry = self._clients.get(client)
        if entry is None:
            entry = _Client(await self._open_for(client))
            self._clients[client] = entry
        entry.connections += 1
        return entry.layer

    async def _open_for(self, client: str) -> Layer:
        mode = self.mode
        if mode in ("normal", "writethrough") and self._clients:
            holder = next(iter(self._clients))
            raise PolicyError(f"medium {self.name} is in use by {holder} "
                              f"(write mode {mode} allows one client at a time)")
        if mode == "readonly":
            return ReadOnlyView(self.base)
        if mode in ("immutable", "multiattach"):
            assert self.diff_factory is not None
            reset = mode == "immutable" and self.autoreset
            self._seen.add(client)
            return await self.diff_factory(client, reset)
        return self.base

    async def release(self, client: str) -> None:
        entry = self._clients.get(client)
        if entry is None:
            return
        entry.connections -= 1
        if entry.connections > 0:
            return
        del self._clients[client]
        if entry.layer is self.base or isinstance(entry.layer, ReadOnlyView):
            return
        done = self._closing[client] = asyncio.Event()
        try:  # a new session of this client waits until the image is closed
            await entry.layer.flush()
            await entry.layer.close()
        finally:
            del self._closing[client]
            done.set()
