"""``blockyard iscsi``: the iSCSI command group.

Target side: serving happens through ``blockyard serve FILE --iscsi HOST:PORT``
(each file is LUN 0 of ``iqn.2026-11.org.blockyard:<name>``) or, for
experiments with per-file flags and CHAP, ``python -m blockyard.transport.iscsi_target``.

Initiator side (our own initiator, no kernel or libiscsi involved):

* ``blockyard iscsi discover PORTAL [--json]`` -- the targets a portal
  offers (SendTargets=All in a Discovery session);
* ``blockyard iscsi probe URL [--json]`` -- log in to
  ``iscsi://[user[%secret]@]host[:port]/TARGET-IQN/LUN`` and show the LUN's
  identity, capacity, block limits, thin provisioning and the negotiated
  keys.  Keep secrets out of ``ps`` with ``?secret_file=PATH``,
  ``?secret_env=NAME`` or ``$BLOCKYARD_ISCSI_SECRET``.

Bad input (a wrong CHAP secret, a target that is down, refuses or does not
exist, a missing LUN) ends with one line naming the URL and the cause.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from typing import Any

from blockyard.cli.render import print_json, table
from blockyard.errors import MediaError
from blockyard.util.units import format_size


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("iscsi", help="iSCSI helpers: discover and probe remote targets",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: _usage(p))
    isub = p.add_subparsers(dest="iscsi_command", metavar="COMMAND")
    d = isub.add_parser("discover", help="list the targets a portal offers (SendTargets)")
    d.add_argument("portal", metavar="PORTAL", help="HOST[:PORT] (default port 3260)")
    d.add_argument("--initiator-name", default=None, help="our IQN")
    d.add_argument("--timeout", type=float, default=10.0, help="seconds (default %(default)s)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_discover)
    pr = isub.add_parser("probe", help="log in to a LUN and show what it is")
    pr.add_argument("url", metavar="URL", help="iscsi://[user[%%secret]@]host[:port]/IQN/LUN")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=_probe)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _run(coro: Coroutine[Any, Any, Any], where: str) -> Any:
    try:
        return asyncio.run(coro)
    except (TimeoutError, OSError) as exc:  # anything the session did not already name
        raise MediaError(f"{where}: {exc or type(exc).__name__}") from None


def _discover(args: argparse.Namespace) -> int:
    from blockyard.iscsi.initiator_config import DEFAULT_INITIATOR
    from blockyard.transport.iscsi_initiator import discover

    name = args.initiator_name or DEFAULT_INITIATOR
    targets = _run(discover(args.portal, name, args.timeout), args.portal)
    if args.json:
        print_json([{"target": t, "portals": p} for t, p in targets])
    elif targets:
        table([[t, ", ".join(p)] for t, p in targets], ["TARGET", "PORTALS"])
    else:
        print(f"{args.portal}: no targets offered to {name}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from blockyard.transport.iscsi_initiator import probe

    info = _run(probe(args.url), args.url.split("@")[-1])
    if args.json:
        print_json(info)
        return 0
    rows = [("url", info["url"]), ("device", f"{info['vendor']} {info['product']} "
                                             f"{info['revision']}"),
            ("identity", info["identity"] or "-"), ("serial", info["serial"] or "-"),
            ("size", f"{format_size(info['size'])} ({info['blocks']} blocks of "
                     f"{info['block_size']} bytes)"),
            ("write protected", _yes(info["write_protected"])), ("FUA", _yes(info["fua"])),
            ("thin (LBPME)", _yes(info["thin"])), ("UNMAP", _yes(info["unmap"])),
            ("GET LBA STATUS", _yes(info["lba_status"])),
            ("max transfer", f"{info['max_transfer_blocks']} blocks"
             if info["max_transfer_blocks"] else "not reported")]
    keys = sorted(info["negotiated"].items())
    width = max(len(k) for k, _ in rows + [(f"  {k}", v) for k, v in keys])
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print("negotiated keys:")
    for key, value in keys:
        print(f"{('  ' + key).ljust(width)}  {value}")
    return 0


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
