"""The asyncio iSCSI target server (RFC 7143) over ``iscsi.TargetConnection``.

Configure it with targets, each an IQN with a SCSI target device, an
optional ACL of initiator IQNs and optional CHAP credentials (one-way, and
mutual: the target's own user/secret)::

    server = IscsiTargetServer([IscsiTarget("iqn.2026-11.org.blockyard:disk", device,
                                            acl=None, chap=("user", "secret12345"))])
    await server.start("127.0.0.1", 3260)
    ...
    await server.stop()        # graceful: ask initiators to log out, then close

uvloop is used when the caller installed its loop policy.  Many sessions
run at once; each connection is an ``iscsi_connection.IscsiConnection``.

Quick mode (for ``blockyard serve --iscsi``): ``quick_targets(exports,
read_only)`` turns ``{name: Layer}`` into targets named
``iqn.2026-11.org.blockyard:<name>`` with the layer as LUN 0 and a stable
identity (``stable_identity``: the same file is the same LUN at every start,
so differencing images made over it open again), so ``serve`` only has to
do::

    server = IscsiTargetServer(quick_targets(exports, read_only))
    await server.start(host, port)

Stand-alone runner (handy while testing the SCSI layer; one target with
LUN 0 per file, named after the file, serves until Ctrl-C or SIGTERM)::

    python -m blockyard.transport.iscsi_target disk.img [ro.img,ro] [cd.img,removable] \\
        --listen 127.0.0.1:3260 [--read-only] [--removable] [--thin] \\
        [--chap USER:SECRET] [--mutual USER:SECRET] [--acl IQN,IQN] [--uvloop]

A file may carry its own flags after commas (``ro``, ``removable``,
``thin``); the options apply to every file.  It prints one URL per target,
e.g. ``iscsi://127.0.0.1:3260/iqn.2026-11.org.blockyard:disk/0`` for
``iscsi-inq``, ``iscsi-test-cu`` and friends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from blockyard.block.layer import Layer
from blockyard.iscsi import PortalConfig, TargetPolicy
from blockyard.iscsi.chap import ChapCredentials
from blockyard.iscsi.keys import target_preferences
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskOptions, DiskUnit
from blockyard.transport.bufpool import PayloadPool
from blockyard.transport.iscsi_connection import IscsiConnection
from blockyard.transport.listen import accept_forever, open_listener

log = logging.getLogger("blockyard.iscsi")
IQN_PREFIX = "iqn.2026-11.org.blockyard:"


@dataclass
class IscsiTarget:
    """One target: an IQN, its SCSI device, who may log in and how they authenticate."""

    name: str
    device: Any  # a ScsiTargetDevice: execute / task_management / nexus_gone / luns
    acl: Iterable[str] | None = None
    chap: tuple[str, str] | None = None  # (user, secret) the initiator must present
    mutual_chap: tuple[str, str] | None = None  # (user, secret) we answer a mutual challenge with
    alias: str = ""

    def policy(self) -> TargetPolicy:
        return TargetPolicy(self.name, None if self.acl is None else frozenset(self.acl),
                            _creds(self.chap), _creds(self.mutual_chap), self.device.luns,
                            self.alias)


def _creds(pair: tuple[str, str] | None) -> ChapCredentials | None:
    return None if pair is None else ChapCredentials(pair[0], pair[1])


class IscsiTargetServer:
    def __init__(self, targets: Iterable[IscsiTarget], *,
                 discovery_chap: tuple[str, str] | None = None, nop_interval: float = 30.0,
                 nop_timeout: float = 30.0, cmd_window: int = 128,
                 max_recv_data_segment: int = 262144, max_burst_length: int = 1 << 20,
                 header_digests: tuple[str, ...] = ("None", "CRC32C"),
                 data_digests: tuple[str, ...] = ("None", "CRC32C")) -> None:
        self.targets: dict[str, IscsiTarget] = {t.name: t for t in targets}
        prefs = target_preferences(max_recv_data_segment=max_recv_data_segment,
                                   max_burst_length=max_burst_length,
                                   header_digests=header_digests, data_digests=data_digests)
        self.portal = PortalConfig({n: t.policy() for n, t in self.targets.items()},
                                   discovery_chap=_creds(discovery_chap), preferences=prefs,
                                   cmd_window=cmd_window, nop_interval=nop_interval,
                                   nop_timeout=nop_timeout)
        self.connections: set[IscsiConnection] = set()
        self.payloads = PayloadPool()  # large write buffers, shared by the connections
        self.threaded_writes = 0  # writes running on I/O threads (stop waits for them)
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        lsock = open_listener(host, port)
        self._listener = lsock
        self._accepting = asyncio.get_running_loop().create_task(
            accept_forever(lsock, self._accepted, log, "iscsi"))
        sock = lsock.getsockname()
        self.host, self.port = sock[0], sock[1]
        log.info("iscsi: listening on %s:%d (%d targets)", self.host, self.port,
                 len(self.targets))

    def _accepted(self, sock: socket.socket, addr: Any) -> None:
        try:
            IscsiConnection(self, sock)
        except OSError as exc:  # the peer left before we looked at it
            log.info("iscsi: connection dropped at accept: %s", exc)
            sock.close()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, ask every session to log out, close what is left after ``grace``."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self.connections):
            conn.request_logout(max(1, int(grace)))
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.kill("server stopping")
        pending = [t for conn in list(self.connections) for t in conn.tasks]
        if pending:
            await asyncio.wait(pending, timeout=grace)
        deadline = asyncio.get_running_loop().time() + grace
        while self.threaded_writes and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # the layer must not close under a running write

    def drop_target_sessions(self, target: str, reason: str, keep: IscsiConnection) -> None:
        for conn in list(self.connections):
            session = conn.core.session if conn.core is not None else None
            if conn is not keep and session is not None and session.target_name == target:
                conn.kill(reason)


# ---- quick mode -------------------------------------------------------------------------
def target_name(name: str) -> str:
    """``iqn.2026-11.org.blockyard:<name>`` with the name folded to legal IQN characters."""
    return IQN_PREFIX + (re.sub(r"[^a-z0-9.:-]+", "-", name.lower()).strip("-") or "disk")


QUICK_NAMESPACE = uuid.UUID("0f5b7d64-55c1-4d1c-9a43-8f1d2e6b7a21")  # files without a UUID


def stable_identity(layer: Layer) -> uuid.UUID:
    """The LUN identity (VPD 83h) of a quick-mode export, the same at every start so a
    differencing image made over the LUN opens again: the image's own UUID (VDI, VHD,
    VMDK), else one derived from the file's device and inode, else a random one."""
    cur: Layer | None = layer
    while cur is not None:
        info = getattr(cur, "info", None)
        try:
            found = info() if callable(info) else None
        except Exception:  # facts that cannot be read give no identity
            found = None
        if found is not None and getattr(found, "uuid", None):
            with contextlib.suppress(ValueError):
                return uuid.UUID(str(found.uuid))
        path = getattr(cur, "path", None)
        if isinstance(path, str) and os.path.exists(path):
            st = os.stat(path)
            return uuid.uuid5(QUICK_NAMESPACE, f"{st.st_dev}:{st.st_ino}")
        cur = cur.inner
    return uuid.uuid4()


def quick_targets(exports: Mapping[str, Layer], read_only: bool,
                  removable: bool = False) -> list[IscsiTarget]:
    """One target per export, the layer as its LUN 0 (see the module docstring)."""
    out = []
    for name, layer in exports.items():
        unit = DiskUnit(layer, DiskOptions(read_only=read_only or layer.read_only,
                                           removable=removable,
                                           uuid=stable_identity(layer)))
        out.append(IscsiTarget(target_name(name), ScsiTargetDevice({0: unit})))
    return out


def _pair(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, secret = text.partition(":")
    if not sep:
        raise SystemExit(f"expected USER:SECRET, got {text!r}")
    return user, secret


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m blockyard.transport.iscsi_target",
                                description="Serve files as iSCSI targets (one LUN 0 each).")
    p.add_argument("files", nargs="+")
    p.add_argument("--listen", default="127.0.0.1:3260", help="HOST:PORT (default %(default)s)")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--removable", action="store_true")
    p.add_argument("--thin", action="store_true", help="report thin provisioning (UNMAP)")
    p.add_argument("--chap", help="USER:SECRET the initiator must present")
    p.add_argument("--mutual", help="USER:SECRET the target answers mutual CHAP with")
    p.add_argument("--acl", help="comma-separated initiator IQNs allowed to log in")
    p.add_argument("--nop-interval", type=float, default=30.0)
    p.add_argument("--uvloop", action="store_true", help="run on uvloop")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    from pathlib import Path

    from blockyard.block.raw import RawFile

    targets = []
    for spec in args.files:
        path, *flags = spec.split(",")
        read_only = args.read_only or "ro" in flags
        layer = RawFile(path, read_only=read_only)
        thin = True if args.thin or "thin" in flags else None
        unit = DiskUnit(layer, DiskOptions(read_only=read_only, thin=thin,
                                           removable=args.removable or "removable" in flags,
                                           uuid=stable_identity(layer)))
        targets.append(IscsiTarget(target_name(Path(path).stem), ScsiTargetDevice({0: unit}),
                                   acl=args.acl.split(",") if args.acl else None,
                                   chap=_pair(args.chap), mutual_chap=_pair(args.mutual)))
    host, _, port = args.listen.rpartition(":")
    stop = asyncio.Event()  # handled before the URLs are printed: a script may stop us at once
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    server = IscsiTargetServer(targets, nop_interval=args.nop_interval)
    await server.start(host.strip("[]") or "127.0.0.1", int(port))
    for t in targets:
        print(f"iscsi://{args.listen}/{t.name}/0", flush=True)
    await stop.wait()
    await server.stop(grace=2.0)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s")
    if args.uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
