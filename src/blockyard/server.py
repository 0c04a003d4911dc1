"""Putting a server together: exports from files, listeners, signals.

``ServePlan`` says what to serve (built by the CLI from arguments or from the
embedded default configuration); ``run(plan)`` opens every medium, starts the
listeners, prints where they are, and runs until SIGTERM or SIGINT, then
shuts down gracefully (in-flight requests finish or fail with ESHUTDOWN,
layers are flushed and closed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from blockyard.block.formats import create_image, probe
from blockyard.block.hostcache import open_raw
from blockyard.block.layer import Layer
from blockyard.block.remote import is_remote
from blockyard.errors import ConfigError, MediaError
from blockyard.media.remote_chain import open_path
from blockyard.transport.nbd_server import Export, ExportTable, NbdServer

log = logging.getLogger("blockyard")


@dataclass
class ExportDecl:
    name: str
    path: str
    read_only: bool = False
    description: str = ""
    create_size: int = 0  # create a sparse image of this size when missing
    format: str | None = None
    host_cache: bool = True  # off: O_DIRECT with our own small write-back cache (raw only)


@dataclass
class ServePlan:
    exports: list[ExportDecl]
    nbd: list[tuple[str, int]] = field(default_factory=list)
    iscsi: list[tuple[str, int]] = field(default_factory=list)
    state_dir: Path | None = None
    banner: bool = False  # print how to connect


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST`` or ``:PORT``."""
    host, port = text, str(default_port)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":") or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ConfigError(f"bad listen address {text!r} (want HOST:PORT)") from None


def default_config() -> dict[str, Any]:
    text = resources.files("blockyard.defaults").joinpath("blockyard.toml").read_text()
    return tomllib.loads(text)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "blockyard"


async def open_export(decl: ExportDecl) -> Export:
    """A file (a differencing image with its whole chain, which may end at a remote
    LUN: media/remote_chain.py) or an ``iscsi://`` URL through the initiator."""
    path = Path(decl.path)
    layer: Layer
    if is_remote(decl.path):
        layer = await open_path(decl.path, read_only=decl.read_only)
        return Export(decl.name, layer, decl.description or decl.path, decl.read_only)
    if decl.create_size and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        layer = create_image(path, decl.create_size, decl.format or "raw")
        log.info("created %s (%d bytes, sparse)", path, decl.create_size)
    else:
        if not path.exists():
            raise MediaError(f"{path}: no such file")
        fmt = decl.format or probe(path)
        if fmt == "raw" and not decl.host_cache:
            layer = open_raw(path, read_only=decl.read_only, host_cache=False)
        else:
            layer = await open_path(str(path), read_only=decl.read_only, fmt=fmt)
    return Export(decl.name, layer, decl.description, decl.read_only)


def _banner(plan: ServePlan, addrs: list[tuple[str, int]], exports: ExportTable) -> None:
    if not addrs:
        return
    host, port = addrs[0]
    hostport = f"[{host}]" if ":" in host else host
    suffix = "" if port == 10809 else f":{port}"
    for e in exports:
        uri = f"nbd://{hostport}{suffix}/{e.name}"
        print(f"serving {e.name!r} ({e.layer.size} bytes) at {uri}")
        if plan.banner:
            print(f"  nbdinfo {uri}\n  qemu-img info {uri}\n"
                  f"  nbd-client {host} {port} /dev/nbd0 -N {e.name}")
    sys.stdout.flush()


async def serve(plan: ServePlan) -> int:
    exports = ExportTable([await open_export(d) for d in plan.exports])
    nbd = NbdServer(exports)
    # before the first address is printed: a script that reads it may stop us at once
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    addrs = []
    try:
        for host, port in plan.nbd:
            addrs.append(await nbd.listen(host, port))
            print(f"nbd: listening on {addrs[-1][0]}:{addrs[-1][1]}", flush=True)
    except OSError as exc:
        raise ConfigError(f"cannot listen: {exc.strerror or exc}") from None
    extra = await _start_iscsi(plan, exports)
    _banner(plan, addrs, exports)
    await stop.wait()
    log.info("shutting down")
    for stopper in extra:
        await stopper()
    await nbd.stop()
    for e in exports:
        await e.layer.close()
    return 0


async def _start_iscsi(plan: ServePlan, exports: ExportTable) -> list[Any]:
    """Quick mode over iSCSI: each export is LUN 0 of target iqn.2026-11.org.blockyard:<name>."""
    if not plan.iscsi:
        return []
    from blockyard.transport.iscsi_target import IscsiTargetServer, quick_targets

    targets = []
    for e in exports:  # one export at a time: each keeps its own read-only flag
        targets += quick_targets({e.name: e.layer}, e.read_only)
    stoppers = []
    for host, port in plan.iscsi:
        server = IscsiTargetServer(targets)
        try:
            await server.start(host, port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        print(f"iscsi: listening on {server.host}:{server.port}", flush=True)
        for t in targets:
            print(f"serving iscsi://{server.host}:{server.port}/{t.name}/0", flush=True)
        stoppers.append(server.stop)
    return stoppers


def run(plan: ServePlan) -> int:
    tune_interpreter()
    return asyncio.run(serve(plan))


def tune_interpreter() -> None:
    """uvloop, and a short GIL switch interval: I/O threads finishing a pread or
    pwrite must get the GIL back quickly while the loop thread is busy, or they
    idle for up to the default 5 ms (seen with py-spy on 1 MiB writes)."""
    sys.setswitchinterval(float(os.environ.get("BLOCKYARD_SWITCH_INTERVAL", "0.0005")))
    if not os.environ.get("BLOCKYARD_NO_UVLOOP"):
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
