"""``blockyard controller add|list|remove``, ``blockyard attach``, ``blockyard detach``.

A controller is named and typed (``--type sata`` ...); its type fixes how
many ports it has (VirtualBox's counts: IDE 4, SATA 30, SCSI 15, SAS 255,
USB 8, NVMe 255, virtio-scsi 256).  ``attach`` puts a registered medium in a
port -- the first free one unless ``--port`` says -- and, with a server
running, it is served at once as the NBD export ``CONTROLLER-PORT`` (or
``--name``).  ``detach`` withdraws the export, lets requests in flight
finish, and ends the sessions that used it.

``register`` also makes sure the registry commands exist under
``blockyard medium`` (``registry_cmds.add_registry_commands``; names the
file commands define already are left alone), creating the group if no
other module made it.
"""

from __future__ import annotations

import argparse
from typing import Any

from blockyard.cli import render
from blockyard.cli.registry_cmds import Sub, add_registry_commands, add_state_dir, call, ref
from blockyard.media.model import CONTROLLER_SLOTS, WRITE_MODES


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("use on or off")
    return text == "on"


def _show(args: argparse.Namespace, value: Any, text: str) -> None:
    if getattr(args, "json", False):
        render.print_json(value)
    else:
        print(text)


def _add(args: argparse.Namespace) -> int:
    c = call(args, "controllers.add", name=args.name, type=args.type,
             host_cache=args.host_cache)
    _show(args, c, f"controller {c['name']} ({c['type']}, {c['slots']} ports) added")
    return 0


def _list(args: argparse.Namespace) -> int:
    controllers = call(args, "controllers.list")
    if args.json:
        render.print_json(controllers)
        return 0
    rows = [[c["name"], c["type"], f"{c['used']}/{c['slots']}",
             "on" if c["host_cache"] else "off",
             ", ".join(f"{a['port']}:{a['export_name']}" for a in c["attachments"]) or "-"]
            for c in controllers]
    render.table(rows, ["NAME", "TYPE", "USED", "HOST-CACHE", "ATTACHMENTS (PORT:EXPORT)"])
    return 0


def _remove(args: argparse.Namespace) -> int:
    call(args, "controllers.remove", name=args.name)
    _show(args, {"removed": args.name}, f"controller {args.name} removed")
    return 0


def _attach(args: argparse.Namespace) -> int:
    r = call(args, "attachments.add", controller=args.controller, port=args.port,
             medium=ref(args.medium), mtype=args.mtype, name=args.name)
    a = r["attachment"]
    _show(args, r, f"{r['medium']['location']} attached at {a['controller']}:{a['port']} "
                   f"as export {a['export_name']}")
    return 0


def _detach(args: argparse.Namespace) -> int:
    r = call(args, "attachments.remove", controller=args.controller, port=args.port)
    _show(args, r, f"detached {r['controller']}:{r['port']} (export {r['export_name']}, "
                   f"{r['sessions_closed']} sessions ended)")
    return 0


def _attachments(args: argparse.Namespace) -> int:
    rows = call(args, "attachments.list")
    if args.json:
        render.print_json(rows)
        return 0
    render.table([[f"{a['controller']}:{a['port']}", a["export_name"], a["medium"] or "?",
                   "yes" if a["served"] else "no"] for a in rows],
                 ["SLOT", "EXPORT", "MEDIUM", "SERVED"])
    return 0


def _parser(sub: Sub, name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    add_state_dir(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=handler)
    return p


def register(sub: Sub) -> None:
    _ensure_medium_group(sub)
    group = sub.add_parser("controller", help="storage controllers (slots for media)",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = group.add_subparsers(dest="controller_command", metavar="COMMAND")
    p = _parser(csub, "add", _add, "add a controller")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--type", required=True, choices=list(CONTROLLER_SLOTS))
    p.add_argument("--host-cache", type=_on_off, default=True, metavar="on|off",
                   help="buffered I/O through the page cache (default on)")
    _parser(csub, "list", _list, "list controllers and their ports")
    p = _parser(csub, "remove", _remove, "remove a controller (refused while it has media)")
    p.add_argument("name", metavar="NAME")
    _parser(csub, "attachments", _attachments, "list every attachment")

    p = _parser(sub, "attach", _attach, "attach a medium to a controller port (an NBD export)")
    p.add_argument("controller", metavar="CONTROLLER")
    p.add_argument("--port", type=int, help="port number (default: the first free one)")
    p.add_argument("--medium", required=True, metavar="NAME|UUID")
    p.add_argument("--mtype", choices=WRITE_MODES, help="set the medium's write mode")
    p.add_argument("--name", help="export name (default CONTROLLER-PORT)")
    p = _parser(sub, "detach", _detach, "detach the medium in a controller port")
    p.add_argument("controller", metavar="CONTROLLER")
    p.add_argument("--port", type=int, required=True)


def _ensure_medium_group(sub: Sub) -> None:
    medium = sub.choices.get("medium")
    if medium is None:
        medium = sub.add_parser("medium", help="the media registry and image tools")
        medium.add_subparsers(dest="medium_command", metavar="COMMAND")
    actions = [a for a in medium._actions if isinstance(a, argparse._SubParsersAction)]
    if actions:
        add_registry_commands(actions[0])
