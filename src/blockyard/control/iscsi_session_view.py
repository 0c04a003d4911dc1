"""One LUN of the daemon's iSCSI target, seen through its medium's write-mode hub.

The NBD transport asks a medium's ``MediumHub`` for a layer once per
session (``acquire(client)`` at NBD_OPT_GO).  A SCSI logical unit has one
layer for every initiator, so ``SessionView`` is that layer: each request
goes to the layer the hub gives the initiator that sent it -- the shared
stack (normal, writethrough, shareable), a read-only view (readonly), or
the initiator's own differencing image (immutable, multiattach).  The
initiator is named by the bandwidth session key the iSCSI connection puts
in ``block.throttle.SESSION`` around each command (``iscsi:<IQN>``); the
hub's client is the IQN (architecture §1: an initiator is identified by its
IQN; an NBD client by its address, so the two never collide).

* The first request of an initiator acquires it (under a lock, so two
  commands at once acquire once); a refusal (``PolicyError``: a normal
  medium held by another client) fails the request with EACCES, which the
  SCSI layer reports as DATA PROTECT, and is tried again on the next one.
* ``release(initiator)`` undoes the acquire when its last I_T nexus is gone
  (``LiveTargetDevice.nexus_gone``); ``release_all`` when the LUN goes.
* ``sync_pread`` and ``sendfile_fd`` are those of the calling initiator's
  layer once it holds one, so page-cache reads keep the SCSI fast path
  (a throttled layer offers neither, so bandwidth groups are not bypassed).
* Requests in flight are counted; ``drain`` waits for them when the LUN is
  being detached, before the medium is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Callable, Hashable
from typing import Any

from blockyard.block.layer import Buffer, Extent, Layer
from blockyard.block.throttle import SESSION
from blockyard.block.writemode import MediumHub, PolicyError
from blockyard.errors import BlockError

PREFIX = "iscsi:"
DIFF_MODES = ("immutable", "multiattach")


def initiator_of(key: Hashable | None) -> str:
    """The hub client for a session key: the IQN of ``iscsi:<IQN>``."""
    if isinstance(key, str) and key.startswith(PREFIX):
        return key[len(PREFIX):]
    return f"{PREFIX}{key if key is not None else '-'}"


class SessionView(Layer):
    def __init__(self, hub: MediumHub, label: str) -> None:
        super().__init__(hub.base)
        self.hub = hub
        self.label = label
        self.read_only = hub.mode == "readonly" or (
            hub.mode not in DIFF_MODES and hub.base.read_only)
        self.clients: dict[str, Layer] = {}
        self._lock = asyncio.Lock()
        self.inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- the initiator's layer ---------------------------------------------------------
    async def _acquire(self, client: str) -> Layer:
        async with self._lock:
            layer = self.clients.get(client)
            if layer is None:
                try:
                    layer = await self.hub.acquire(client)
                except PolicyError as exc:
                    raise BlockError(errno.EACCES, f"{self.label}: {exc}") from None
                self.clients[client] = layer
            return layer

    async def _call(self, name: str, *args: Any, **kw: Any) -> Any:
        self.inflight += 1
        self._idle.clear()
        try:
            client = initiator_of(SESSION.get())
            layer = self.clients.get(client) or await self._acquire(client)
            return await getattr(layer, name)(*args, **kw)
        finally:
            self.inflight -= 1
            if not self.inflight:
                self._idle.set()

    def _held(self) -> Layer | None:
        return self.clients.get(initiator_of(SESSION.get()))

    @property
    def sync_pread(self) -> Callable[[int, int], Buffer] | None:  # type: ignore[override]
        layer = self._held()
        return layer.sync_pread if layer is not None else None

    @property
    def sendfile_fd(self) -> int | None:  # type: ignore[override]
        layer = self._held()
        return layer.sendfile_fd if layer is not None else None

    # ---- the operations ---------------------------------------------------------------
    async def _pread(self, offset: int, length: int) -> Buffer:
        return await self._call("pread", offset, length)  # type: ignore[no-any-return]

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        await self._call("pwrite", offset, data, fua)

    async def _flush(self) -> None:
        await self._call("flush")

    async def _trim(self, offset: int, length: int, fua: bool) -> None:
        await self._call("trim", offset, length, fua)

    async def _zero(self, offset: int, length: int, may_trim: bool, fast: bool,
                    fua: bool) -> None:
        await self._call("zero", offset, length, may_trim=may_trim, fast=fast, fua=fua)

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        return await self._call("extents", offset, length)  # type: ignore[no-any-return]

    async def _cache(self, offset: int, length: int) -> None:
        await self._call("cache", offset, length)

    async def _close(self) -> None:
        await self.release_all()  # the medium itself belongs to the LiveServer

    # ---- sessions ending --------------------------------------------------------------
    async def release(self, client: str) -> None:
        if self.clients.pop(client, None) is not None:
            await self.hub.release(client)

    async def release_all(self) -> None:
        for client in list(self.clients):
            await self.release(client)

    async def drain(self, grace: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)

    def describe(self) -> str:
        return f"iscsi-sessions[{self.hub.mode}] -> {self.hub.base.describe()}"
