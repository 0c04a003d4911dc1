"""``blockyard snapshot take|restore|delete|list`` -- snapshots of a registered medium.

  blockyard snapshot take MEDIUM [--name N] [--description D]
  blockyard snapshot restore MEDIUM SNAPSHOT
  blockyard snapshot delete MEDIUM SNAPSHOT     merges; a progress bar on a terminal
  blockyard snapshot list MEDIUM [--json]

MEDIUM is the disk (by name, path or UUID; any image of its snapshot tree
names it too), SNAPSHOT a snapshot's name or UUID.  Everything works while
clients are connected: the server pauses the medium's sessions for a moment
and swaps its chain under them.  With a server running the commands go
through its control API (a merge's progress is then in the server's log);
without one they work on the registry and the files directly.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from blockyard.cli import render
from blockyard.cli.client import LocalBackend, open_backend, state_dir_of
from blockyard.cli.registry_cmds import Sub, add_state_dir, call, ref
from blockyard.util.progress import ProgressBar


def _show(args: argparse.Namespace, value: Any, text: str) -> None:
    if getattr(args, "json", False):
        render.print_json(value)
    else:
        print(text)


def _take(args: argparse.Namespace) -> int:
    r = call(args, "snapshots.take", ref=ref(args.medium), name=args.name,
             description=args.description)
    _show(args, r, f"took snapshot {r['name']!r} ({r['snapshot']}); writes now go to "
                   f"{r['current']}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    r = call(args, "snapshots.restore", ref=ref(args.medium), snapshot=args.snapshot)
    _show(args, r, f"restored snapshot {r['name']!r}; writes now go to {r['current']}")
    return 0


def _delete(args: argparse.Namespace) -> int:
    backend = open_backend(state_dir_of(args))
    if isinstance(backend, LocalBackend):
        r = _delete_here(args)
    else:
        r = backend.call("snapshots.delete", ref=ref(args.medium), snapshot=args.snapshot)
    merged = f", merged {r['merged']} bytes into {r['into']}" if r.get("into") else ""
    _show(args, r, f"deleted snapshot {r['name']!r}{merged}")
    return 0


def _delete_here(args: argparse.Namespace) -> Any:
    """No server runs: merge in this process, with a progress bar on a terminal."""
    from blockyard.media.context import Context
    from blockyard.media.registry import Registry
    from blockyard.media.snapshot_delete import delete_snapshot

    state = state_dir_of(args)
    registry = Registry(state)
    try:
        with ProgressBar(f"merging snapshot {args.snapshot}") as bar:
            return asyncio.run(delete_snapshot(Context(registry, state), ref(args.medium),
                                               args.snapshot, bar))
    finally:
        registry.close()


def _list(args: argparse.Namespace) -> int:
    r = call(args, "snapshots.list", ref=ref(args.medium))
    if args.json:
        render.print_json(r)
        return 0
    print(f"{r['location']} ({r['medium']})")
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    for s in r["snapshots"]:
        by_parent.setdefault(s["parent"], []).append(s)

    def walk(parent: str | None, depth: int) -> None:
        for s in by_parent.get(parent, []):
            here = "   <- current state builds on this" if s["current"] else ""
            print(f"{'  ' * (depth + 1)}{s['name']}  [{s['uuid']}]  {s['created_at']}{here}")
            walk(s["uuid"], depth + 1)
    walk(None, 0)
    if not r["snapshots"]:
        print("  (no snapshots)")
    print(f"current state: {r['current_state']['location']}")
    return 0


def _parser(sub: Sub, name: str, handler: Any, text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=text, description=text)
    add_state_dir(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("medium", metavar="MEDIUM")
    p.set_defaults(func=handler)
    return p


def register(sub: Sub) -> None:
    group = sub.add_parser("snapshot", help="snapshots of a registered medium",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    inner = group.add_subparsers(dest="snapshot_command", metavar="COMMAND")
    group.set_defaults(func=lambda _args: group.print_help() or 2)
    p = _parser(inner, "take", _take, "freeze the medium's current state as a snapshot")
    p.add_argument("--name", help="snapshot name (default 'Snapshot N')")
    p.add_argument("--description", default="")
    p = _parser(inner, "restore", _restore, "discard the current state and go back to a "
                "snapshot")
    p.add_argument("snapshot", metavar="SNAPSHOT")
    p = _parser(inner, "delete", _delete, "delete a snapshot, merging its image with its "
                "neighbour")
    p.add_argument("snapshot", metavar="SNAPSHOT")
    _parser(inner, "list", _list, "list a medium's snapshots (a tree)")
