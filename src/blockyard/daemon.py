"""The registry-driven server: what ``blockyard serve`` runs without FILE arguments.

Start, in order:

1. take ``STATE/server.lock`` (``flock``): one server per state directory;
2. open the registry (``media.registry``; a crash-left WAL is replayed by
   SQLite) and apply the config's declarations (``media.declare``): the
   default config creates and attaches the 1 GiB sparse ``demo.img``;
   declared bandwidth groups are written to the registry (their declared
   limit wins), attachments' ``bandwidth_group`` put their media in them,
   and the server's one ``BandwidthGroups`` is synced from the registry;
3. re-check every medium's file (an inaccessible one is marked, not fatal);
4. publish every attachment as an export and, with iSCSI on, as a LUN of
   its controller's target (``control.iscsi_live``; one that cannot be
   opened is logged and skipped, the rest are served);
5. listen for NBD, print ``nbd: listening on HOST:PORT`` (first line), then
   for iSCSI (``--iscsi``, else ``[iscsi] listen``), ``iscsi: listening on
   HOST:PORT``;
6. open the control API on ``STATE/control.sock`` (mode 0600; a stale
   socket left by a crash is replaced, one owned by another user is an
   error) and, if configured, on TCP with a bearer token;
7. print the banner; run until SIGTERM or SIGINT.

Stop: close the control API, stop iSCSI (initiators are asked to log out),
stop NBD (in-flight requests finish or fail
with ESHUTDOWN after the grace period), flush and close every medium, close
the registry, remove the socket, drop the lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from blockyard.block.bandwidth import BandwidthGroups
from blockyard.config import Config
from blockyard.control.api import Api, error_response
from blockyard.control.http import HttpServer
from blockyard.control.iscsi_live import IscsiLive
from blockyard.control.live import LiveServer
from blockyard.errors import BlockyardError, ConfigError, ConflictError, NotFoundError
from blockyard.media import declare
from blockyard.media.context import Context
from blockyard.media.ops import media_bandwidth_group, media_refresh
from blockyard.media.registry import Registry
from blockyard.server import parse_address, tune_interpreter
from blockyard.transport.nbd_server import ExportTable, NbdServer

log = logging.getLogger("blockyard.daemon")
SOCKET_NAME = "control.sock"
LOCK_NAME = "server.lock"


@dataclass
class DaemonPlan:
    config: Config
    state_dir: Path
    nbd: list[tuple[str, int]] = field(default_factory=list)
    iscsi: list[tuple[str, int]] = field(default_factory=list)
    read_only: bool = False
    banner: bool = True


def take_lock(state_dir: Path) -> int:
    """Hold ``server.lock`` for the server's life (a CLI probing it holds it an instant)."""
    fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    for _ in range(50):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(0.02)
    else:
        other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConflictError(f"another blockyard server (pid {other}) runs with state "
                            f"directory {state_dir}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def socket_path(state_dir: Path, cfg: Config) -> Path:
    p = Path(cfg.control.socket or SOCKET_NAME).expanduser()
    return p if p.is_absolute() else state_dir / p


def clear_stale_socket(path: Path) -> None:
    """Remove a socket left by a crashed server; refuse one that is not ours."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if st.st_uid != os.getuid():
        raise ConfigError(f"{path}: the control socket belongs to uid {st.st_uid}, not to you "
                          f"(uid {os.getuid()}); use another --state-dir")
    os.unlink(path)  # we hold the server lock, so nobody is listening on it


async def _publish_all(ctx: Context, live: LiveServer) -> None:
    for att in ctx.registry.attachments():
        m = ctx.registry.medium(att.medium_uuid)
        if m is None:
            continue
        try:
            await live.attach(att, m)
        except BlockyardError as exc:
            log.error("cannot serve %s (%s): %s", att.export_name, m.location, exc)
            print(f"not serving {att.export_name!r}: {exc}", file=sys.stderr, flush=True)


async def _bandwidth(ctx: Context, cfg: Config, groups: BandwidthGroups) -> None:
    """Declared groups into the registry, declared memberships, then the live set."""
    declared = [(g.name, g.limit) for g in cfg.bandwidth_groups]

    def put() -> None:
        for name, limit in declared:
            ctx.registry.put_bandwidth_group(name, limit)
    ctx.registry.transact(put)
    for a in cfg.attachments:
        held = ctx.registry.attachment(a.controller, a.port) if a.bandwidth_group else None
        if held is None:
            continue
        try:
            await media_bandwidth_group(ctx, held.medium_uuid, a.bandwidth_group)
        except NotFoundError as exc:
            raise ConfigError(f"{cfg.source}: attachment {a.controller}:{a.port}: {exc}; "
                              "declare it in a [[bandwidth_group]] table") from None
    groups.sync(dict(ctx.registry.bandwidth_groups()))


def _iscsi_addresses(plan: DaemonPlan) -> list[tuple[str, int]]:
    return plan.iscsi or [parse_address(a, 3260) for a in plan.config.iscsi.listen]


async def _listen_iscsi(iscsi: IscsiLive | None, addrs: list[tuple[str, int]]) -> None:
    if iscsi is None:
        return
    for host, port in addrs:
        server = await iscsi.start(host, port)
        print(f"iscsi: listening on {server.host}:{server.port}", flush=True)
        for t in iscsi.targets.values():
            for lun in sorted(t.device.luns):
                print(f"serving iscsi://{server.host}:{server.port}/{t.name}/{lun}", flush=True)


async def _control(plan: DaemonPlan, ctx: Context, live: LiveServer,
                   iscsi: IscsiLive | None = None) -> HttpServer:
    cfg = plan.config
    token = None
    if cfg.control.token_file:
        try:
            token = Path(cfg.control.token_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{cfg.control.token_file}: cannot read: {exc.strerror}") from None
    views = {"live.sessions": lambda: live.sessions() + (iscsi.sessions() if iscsi else []),
             "live.exports": live.exports,
             "live.targets": lambda: iscsi.describe() if iscsi else [],
             "live.health": lambda: {"ok": True, "pid": os.getpid(),
                                     "state_dir": str(plan.state_dir)}}
    http = HttpServer(Api(ctx, views).handle, error_response, token)
    path = socket_path(plan.state_dir, cfg)
    clear_stale_socket(path)
    await http.listen_unix(str(path))
    print(f"control: listening on unix:{path}", flush=True)
    if cfg.control.listen:
        from blockyard.server import parse_address

        host, port = await http.listen_tcp(*parse_address(cfg.control.listen, 8809))
        print(f"control: listening on http://{host}:{port} (bearer token)", flush=True)
    return http


def _banner(addrs: list[tuple[str, int]], exports: ExportTable, hints: bool) -> None:
    if not addrs:
        return
    host, port = addrs[0]
    hostport = f"[{host}]" if ":" in host else host
    suffix = "" if port == 10809 else f":{port}"
    for e in exports:
        uri = f"nbd://{hostport}{suffix}/{e.name}"
        print(f"serving {e.name!r} ({e.layer.size} bytes) at {uri}")
        if hints:
            print(f"  nbdinfo {uri}\n  qemu-img info {uri}\n"
                  f"  nbd-client {host} {port} /dev/nbd0 -N {e.name}")
    sys.stdout.flush()


async def serve_registry(plan: DaemonPlan) -> int:
    plan.state_dir.mkdir(parents=True, exist_ok=True)
    lock = take_lock(plan.state_dir)
    registry = Registry(plan.state_dir)
    nbd = NbdServer(ExportTable())
    groups = BandwidthGroups()
    live = LiveServer(registry, nbd, read_only=plan.read_only, groups=groups)
    ctx = Context(registry, plan.state_dir, None)
    http: HttpServer | None = None
    iscsi: IscsiLive | None = None
    stop = _stop_on_signal()  # before any address is printed: a script may stop us at once
    try:
        await declare.apply(ctx, plan.config)
        await _bandwidth(ctx, plan.config, groups)
        await media_refresh(ctx)
        ctx.live = live
        if _iscsi_addresses(plan):
            iscsi = IscsiLive(live, plan.config, grace=live.grace)
        await _publish_all(ctx, live)
        addrs = []
        for host, port in plan.nbd:
            try:
                addrs.append(await nbd.listen(host, port))
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port}: "
                                  f"{exc.strerror or exc}") from None
            print(f"nbd: listening on {addrs[-1][0]}:{addrs[-1][1]}", flush=True)
        await _listen_iscsi(iscsi, _iscsi_addresses(plan))
        http = await _control(plan, ctx, live, iscsi)
        _banner(addrs, nbd.exports, plan.banner)
        await stop.wait()
        log.info("shutting down")
    finally:
        if http is not None:
            await http.close()
        if iscsi is not None:
            await iscsi.stop()
        await nbd.stop()
        await live.close_all()
        registry.close()
        os.close(lock)
    return 0


def _stop_on_signal() -> asyncio.Event:
    """An event SIGTERM and SIGINT set (from now on)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _log_to_file(plan: DaemonPlan) -> None:
    """``[server] log_file``: send the log there instead of stderr."""
    name = plan.config.server.log_file
    if not name:
        return
    path = Path(name).expanduser()
    path = path if path.is_absolute() else plan.state_dir / path
    try:
        handler = logging.FileHandler(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open the log file: {exc.strerror}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]


def run(plan: DaemonPlan) -> int:
    plan.state_dir.mkdir(parents=True, exist_ok=True)
    _log_to_file(plan)
    tune_interpreter()  # uvloop and the GIL switch interval, as in quick mode
    return asyncio.run(serve_registry(plan))
