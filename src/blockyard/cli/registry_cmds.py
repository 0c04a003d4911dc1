"""``blockyard medium add|list|info|search|modify|remove|release|clear-inaccessible|refresh|clone``.

The registry half of ``blockyard medium`` (the file half -- create, check,
compact, resize on FILES -- is ``cli/medium.py``).  ``add_registry_commands``
takes the ``medium`` group's sub-parsers and adds one parser per command;
each handler turns its arguments into one operation of
``media.operations`` run through ``cli.client.open_backend``: via the
running server's control API, or on the database when no server runs.

Creating: ``blockyard medium add --create SIZE FILE [--format F]
[--variant V]`` creates the image and registers it in one step; the
file-level ``blockyard medium create`` makes an unregistered file, which
``medium add FILE`` registers later.  Keeping creation file-level there and
registration here means one command never does half of the other's job.

Names: a medium is named by UUID (or a unique prefix of 8+ characters), by
path, or by file name when that is unique.  Anything that looks like a path
(has a ``/`` or exists here) is made absolute in the CLI, since the server
does not share our working directory; an ``iscsi://`` URL is passed as it is.

Remote media: ``blockyard medium add iscsi://[user[%secret]@]host[:port]/IQN/LUN``
registers a LUN of a remote target (the server logs in to it when it is
attached); the registry keeps the URL without its secret.

Bandwidth groups: ``blockyard medium modify X --bandwidth-group NAME`` puts
a medium in a group (``none``: in no group); the groups themselves are
``blockyard bandwidth add|set|remove|list``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from blockyard.cli import render
from blockyard.cli.client import open_backend, state_dir_of
from blockyard.errors import NotFoundError
from blockyard.media.model import KINDS, WRITE_MODES
from blockyard.util.units import parse_size

Sub = argparse._SubParsersAction  # type: ignore[type-arg]


def ref(text: str) -> str:
    """A medium reference as the server must see it (paths made absolute)."""
    return path(text) if "/" in text or os.path.exists(text) else text


def path(text: str) -> str:
    """A file argument, always made absolute here (the server has another cwd)."""
    if text.startswith("iscsi://"):
        return text  # a remote LUN, not a file
    p = os.path.abspath(os.path.expanduser(text))
    return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))


def add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=None,
                   help="state directory (default $BLOCKYARD_STATE_DIR or "
                        "$XDG_STATE_HOME/blockyard)")


def call(args: argparse.Namespace, op: str, **params: Any) -> Any:
    return open_backend(state_dir_of(args)).call(op, **params)


def on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("use on or off")
    return text == "on"


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except Exception as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ---- handlers -------------------------------------------------------------------------------
def _add(args: argparse.Namespace) -> int:
    m = call(args, "media.add", path=path(args.file), kind=args.kind, write_mode=args.type,
             description=args.description, format=args.format,
             parent=ref(args.parent) if args.parent else None, create_size=args.create,
             variant=args.variant)
    _show(args, m, f"registered {m['location']} as {m['uuid']} ({m['kind']}, {m['format']})")
    if m.get("warning") and not args.json:
        print(f"warning: {m['warning']}")
    return 0


def _list(args: argparse.Namespace) -> int:
    media = call(args, "media.list", kind=args.kind)
    if args.json:
        render.print_json(media)
    else:
        render.media_table(media, tree=args.tree)
    return 0


def _info(args: argparse.Namespace) -> int:
    m = call(args, "media.info", ref=ref(args.medium))
    if args.json:
        render.print_json(m)
    else:
        render.medium_block(m)
    return 0


def _search(args: argparse.Namespace) -> int:
    media = call(args, "media.search", text=args.text)
    if args.json:
        render.print_json(media)
    else:
        render.media_table(media)
    return 0 if media else 3


def _modify(args: argparse.Namespace) -> int:
    medium = ref(args.medium)
    m = None
    changes = (args.type, args.autoreset, args.description, args.resize, args.move)
    if any(c is not None for c in changes) or args.compact or args.bandwidth_group is None:
        m = call(args, "media.modify", ref=medium, write_mode=args.type,
                 autoreset=args.autoreset, description=args.description, resize=args.resize,
                 compact=args.compact or None, move=path(args.move) if args.move else None)
        medium = m["uuid"]
    if args.bandwidth_group is not None:
        m = call(args, "media.bandwidth_group", ref=medium, group=args.bandwidth_group)
    assert m is not None
    _show(args, m, f"{m['location']}: modified")
    return 0


def _remove(args: argparse.Namespace) -> int:
    r = call(args, "media.remove", ref=ref(args.medium), delete=args.delete)
    what = "removed and deleted" if r["deleted"] else "removed from the registry"
    _show(args, r, f"{r['location']}: {what}")
    for p in r["problems"]:
        print(f"warning: {p}")
    return 0


def _release(args: argparse.Namespace) -> int:
    r = call(args, "media.release", ref=ref(args.medium))
    slots = ", ".join(f"{d['controller']}:{d['port']}" for d in r["detached"]) or "nothing"
    _show(args, r, f"released {r['released']}: detached from {slots}")
    return 0


def _clear(args: argparse.Namespace) -> int:
    removed = call(args, "media.clear_inaccessible")
    lines = [f"forgot {m['kind']} {m['location']} ({m['uuid']})" for m in removed]
    _show(args, removed, "\n".join(lines) or "no inaccessible DVD or floppy media")
    return 0


def _refresh(args: argparse.Namespace) -> int:
    changes = call(args, "media.refresh")
    lines = []
    for c in changes:
        state = "" if "accessible" not in c else (
            " now accessible" if c["accessible"] else f" inaccessible: {c['last_error']}")
        lines.append(f"{c['location']}:{state or ' sizes updated'}")
    _show(args, changes, "\n".join(lines) or "every medium is as registered")
    return 0


def _clone(args: argparse.Namespace) -> int:
    m = call(args, "media.clone", src=ref(args.src), dst=path(args.dst), format=args.format,
             variant=args.variant, kind=args.kind, write_mode=args.type,
             register=not args.no_register)
    _show(args, m, f"cloned to {m['location']} ({m['format']}), UUID {m['uuid']}")
    return 0


def _show(args: argparse.Namespace, value: Any, text: str) -> None:
    if getattr(args, "json", False):
        render.print_json(value)
    else:
        print(text)


# ---- parsers ---------------------------------------------------------------------------------
def _parser(sub: Sub, name: str, handler: Any, help_text: str,
            json_flag: bool = True) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    add_state_dir(p)
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=handler)
    return p


def _common_medium_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=KINDS, help="hdd (default), dvd (ISO images) or floppy")
    p.add_argument("--type", choices=WRITE_MODES, help="write mode (default normal; dvd: "
                   "readonly)")


def add_registry_commands(medium_sub: Sub) -> list[str]:
    """Add the registry commands to the ``medium`` group; returns the names added.

    Idempotent: a name the group has already is not added again.  The one
    name both halves want is ``info``: when the file half's ``info FILE``
    exists, it is widened (``_merge_info``) instead of replaced.
    """
    have = dict(getattr(medium_sub, "choices", {}) or {})
    added = []
    for name, build in BUILDERS.items():
        if name not in have:
            build(medium_sub)
            added.append(name)
    if "info" in have and not have["info"].get_default("registry_merged"):
        _merge_info(have["info"])
    return added


def _merge_info(p: argparse.ArgumentParser) -> None:
    """``medium info X``: the registry's view when X is registered, else the file's.

    The registry is consulted only when there is one (a server runs, or the
    state directory has a registry file), so looking at a stray image file
    never creates a state directory.
    """
    file_info = p.get_default("func")
    if not any("--state-dir" in a.option_strings for a in p._actions):
        add_state_dir(p)

    def info(args: argparse.Namespace) -> int:
        target = args.file
        state = state_dir_of(args)
        if (state / "control.sock").exists() or (state / "registry.sqlite").exists():
            try:
                args.medium = target
                return _info(args)
            except NotFoundError:
                if not os.path.exists(target):
                    raise
        return int(file_info(args))
    p.set_defaults(func=info, registry_merged=True)


def _b_add(sub: Sub) -> None:
    p = _parser(sub, "add", _add, "register an existing image (or --create one), or a remote "
                "LUN by its iscsi:// URL")
    p.add_argument("file", metavar="FILE|URL")
    _common_medium_opts(p)
    p.add_argument("--description", default="")
    p.add_argument("--format", help="image format (default: probe the content)")
    p.add_argument("--parent", metavar="NAME|UUID",
                   help="register as a child of this medium (when the file does not say)")
    p.add_argument("--create", metavar="SIZE", type=size_arg,
                   help="create the image first, this big (sparse)")
    p.add_argument("--variant", default="dynamic", choices=["dynamic", "fixed"],
                   help="with --create: dynamic (default) or fixed")


def _b_list(sub: Sub) -> None:
    p = _parser(sub, "list", _list, "list registered media")
    p.add_argument("kind", nargs="?", choices=KINDS)
    p.add_argument("--tree", action="store_true", help="children under their parents")


def _b_info(sub: Sub) -> None:
    p = _parser(sub, "info", _info, "show one registered medium")
    p.add_argument("medium", metavar="NAME|UUID")


def _b_search(sub: Sub) -> None:
    p = _parser(sub, "search", _search, "find media by name, path, UUID or description")
    p.add_argument("text", metavar="TEXT")


def _b_modify(sub: Sub) -> None:
    p = _parser(sub, "modify", _modify, "change a registered medium")
    p.add_argument("medium", metavar="NAME|UUID")
    p.add_argument("--type", choices=WRITE_MODES, help="write mode")
    p.add_argument("--autoreset", type=on_off, metavar="on|off")
    p.add_argument("--description")
    p.add_argument("--resize", type=size_arg, metavar="SIZE")
    p.add_argument("--compact", action="store_true")
    p.add_argument("--move", metavar="NEW_PATH", help="move the file(s); references follow")
    p.add_argument("--bandwidth-group", metavar="NAME|none",
                   help="put the medium in this bandwidth group (none: in no group)")


def _b_remove(sub: Sub) -> None:
    p = _parser(sub, "remove", _remove, "forget a medium (refused while attached or a parent)")
    p.add_argument("medium", metavar="NAME|UUID")
    p.add_argument("--delete", action="store_true", help="delete the file(s) too")


def _b_release(sub: Sub) -> None:
    p = _parser(sub, "release", _release, "detach a medium from every slot")
    p.add_argument("medium", metavar="NAME|UUID")


def _b_clear(sub: Sub) -> None:
    _parser(sub, "clear-inaccessible", _clear,
            "forget DVD and floppy media whose file is gone")


def _b_refresh(sub: Sub) -> None:
    _parser(sub, "refresh", _refresh, "re-read every medium's file: accessible, sizes")


def _b_clone(sub: Sub) -> None:
    p = _parser(sub, "clone", _clone, "copy a medium (sparse, new UUID) and register the copy")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--format", choices=["raw", "vdi", "vhd", "vmdk", "parallels"],
                   help="format of the copy (default: the source's)")
    p.add_argument("--variant", default="dynamic",
                   help="dynamic (default), fixed, or a format's own (e.g. vmdk split2g)")
    _common_medium_opts(p)
    p.add_argument("--no-register", action="store_true", help="make the copy only")


BUILDERS = {"add": _b_add, "list": _b_list, "info": _b_info, "search": _b_search,
            "modify": _b_modify, "remove": _b_remove, "release": _b_release,
            "clear-inaccessible": _b_clear, "refresh": _b_refresh, "clone": _b_clone}
