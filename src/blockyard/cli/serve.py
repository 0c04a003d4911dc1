"""``blockyard serve``: the embedded default, or quick mode over named files.

* ``blockyard serve [--config FILE]`` -- the registry-driven server
  (``daemon.py``) with the built-in configuration (configs/blockyard.toml):
  a state directory, a 1 GiB sparse demo disk made on first start and
  registered, NBD on 127.0.0.1:10809 exporting it as ``demo``, the control
  API on STATE/control.sock.
* ``blockyard serve disk.img other.vdi --nbd 127.0.0.1:0 [--read-only]`` --
  quick mode, like qemu-nbd: each file is an export named after its stem
  (``--name`` overrides, once per file, in order); port 0 picks a free port,
  which is printed.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from blockyard.errors import ConfigError

if TYPE_CHECKING:  # the servers are imported when one runs: other commands start faster
    from blockyard.daemon import DaemonPlan
    from blockyard.server import ServePlan


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve disk images over NBD (and iSCSI)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", metavar="FILE", help="images to export (quick mode)")
    p.add_argument("--nbd", action="append", metavar="HOST:PORT",
                   help="NBD listen address (repeatable; default 127.0.0.1:10809)")
    p.add_argument("--iscsi", action="append", metavar="HOST:PORT",
                   help="iSCSI listen address (repeatable)")
    p.add_argument("--name", action="append", default=[],
                   help="export name for the corresponding FILE (default: file stem)")
    p.add_argument("--read-only", "-r", action="store_true", help="refuse writes")
    p.add_argument("--format", "-f", help="image format (default: probe the content)")
    p.add_argument("--host-cache", default="on", metavar="on|off",
                   help="off: raw images bypass the page cache (O_DIRECT, own write cache)")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="state directory (default $BLOCKYARD_STATE_DIR or "
                        "$XDG_STATE_HOME/blockyard)")
    p.add_argument("--config", metavar="FILE",
                   help="configuration file (default: the embedded configs/blockyard.toml)")
    p.add_argument("--log-level", default=os.environ.get("BLOCKYARD_LOG", "info"),
                   choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_serve)


def _default_name(item: str) -> str:
    """A file's stem; for ``iscsi://host/iqn.x:name/LUN`` the IQN's last component."""
    if item.startswith("iscsi://"):
        target = item.split("?", 1)[0].rstrip("/").split("/")[-2]
        return target.rsplit(":", 1)[-1] or target
    return Path(item).stem


def _location(item: str) -> str:
    return item if item.startswith("iscsi://") else str(Path(item).resolve())


def _quick_plan(args: argparse.Namespace) -> ServePlan:
    from blockyard.block.hostcache import parse_host_cache
    from blockyard.server import ExportDecl, ServePlan, parse_address

    if len(args.name) > len(args.files):
        raise ConfigError("more --name options than files")
    names = list(args.name) + [_default_name(f) for f in args.files[len(args.name):]]
    if len(set(names)) != len(names):
        raise ConfigError(f"export names collide: {', '.join(names)}; use --name")
    host_cache = parse_host_cache(args.host_cache)
    exports = [ExportDecl(n, _location(f), args.read_only, format=args.format,
                          host_cache=host_cache)
               for n, f in zip(names, args.files, strict=True)]
    nbd = [parse_address(a, 10809) for a in args.nbd or ([] if args.iscsi else ["127.0.0.1"])]
    iscsi = [parse_address(a, 3260) for a in args.iscsi or []]
    return ServePlan(exports, nbd, iscsi)


def _daemon_plan(args: argparse.Namespace) -> DaemonPlan:
    """No FILE: the registry-driven daemon, configured by --config or the embedded default."""
    from blockyard.config import load_default, load_file
    from blockyard.daemon import DaemonPlan
    from blockyard.server import default_state_dir, parse_address

    cfg = load_file(args.config) if args.config else load_default()
    state = args.state_dir or os.environ.get("BLOCKYARD_STATE_DIR") \
        or cfg.server.state_dir or default_state_dir()
    nbd = [parse_address(a, 10809) for a in args.nbd or cfg.nbd.listen]
    iscsi = [parse_address(a, 3260) for a in args.iscsi or []]
    return DaemonPlan(cfg, Path(state).expanduser().absolute(), nbd, iscsi, args.read_only)


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.files:
        from blockyard.daemon import run as run_daemon

        return run_daemon(_daemon_plan(args))
    from blockyard.server import run

    return run(_quick_plan(args))
