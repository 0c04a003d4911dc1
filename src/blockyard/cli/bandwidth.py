"""``blockyard bandwidth add|set|remove|list`` -- bandwidth groups, as VBoxManage bandwidthctl.

  blockyard bandwidth add NAME --limit 20M
  blockyard bandwidth set NAME --limit 10M      (0 = unlimited)
  blockyard bandwidth remove NAME
  blockyard bandwidth list [--json]

Limits take VBoxManage's units: a bare number is megabytes per second;
K, M, G are kilo-, mega-, gigabytes per second (binary: M = 2^20); k, m, g
are kilo-, mega-, gigabits per second (decimal: 1m = 125000 bytes/s).

The commands work on a ``BandwidthStore`` (add / set / remove / list).
``STORE_FACTORY`` chooses the store from the state directory (``--state-dir``,
else ``$BLOCKYARD_STATE_DIR``, else ``$XDG_STATE_HOME/blockyard``): it is
``RegistryStore``, the media registry's ``bandwidth_groups`` table reached
like every registry command (``cli.client.open_backend``): through the
running server's control API -- which changes the live limit at once, for
requests not yet started -- or straight in the database when no server runs.
Removing a group that media still use is refused, naming them.
``JsonFileStore`` (``STATE/bandwidth_groups.json``, flock + atomic replace) is
the earlier stand-alone store, kept for tests and tools that want no registry.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from blockyard.block.bandwidth import check_group_name
from blockyard.cli.client import open_backend, state_dir_of
from blockyard.errors import BlockyardError, ConfigError, ConflictError, NotFoundError
from blockyard.util.limits import check_rate, describe_limit, format_limit, parse_limit

STORE_FILE = "bandwidth_groups.json"


class BandwidthStore(Protocol):
    """Where bandwidth groups are kept; limits are bytes per second (0 = unlimited)."""

    def add(self, name: str, limit: int) -> None: ...
    def set(self, name: str, limit: int) -> None: ...
    def remove(self, name: str) -> None: ...
    def list(self) -> list[tuple[str, int]]: ...


class JsonFileStore:
    """Groups in one JSON file: ``{"groups": {"name": bytes_per_second}}``.

    ``users(name)`` (optional) names the media still using a group, so that
    ``remove`` can refuse like the registry does.
    """

    def __init__(self, path: Path, users: Callable[[str], Iterable[str]] | None = None) -> None:
        self.path = path
        self.users = users

    @contextmanager
    def _locked(self) -> Iterator[dict[str, int]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            groups = self._load()
            before = dict(groups)
            yield groups
            if groups != before:
                self._save(groups)

    def _load(self) -> dict[str, int]:
        try:
            doc = json.loads(self.path.read_text())
            groups = doc["groups"]
            return {check_group_name(str(k)): check_rate(v) for k, v in groups.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
            raise ConfigError(f"{self.path}: not a bandwidth group file ({exc})") from None

    def _save(self, groups: dict[str, int]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"groups": groups}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def add(self, name: str, limit: int) -> None:
        with self._locked() as groups:
            if name in groups:
                raise ConflictError(f"bandwidth group {name!r} already exists")
            groups[name] = limit

    def set(self, name: str, limit: int) -> None:
        with self._locked() as groups:
            if name not in groups:
                raise NotFoundError(f"no bandwidth group named {name!r}")
            groups[name] = limit

    def remove(self, name: str) -> None:
        with self._locked() as groups:
            if name not in groups:
                raise NotFoundError(f"no bandwidth group named {name!r}")
            using = sorted(self.users(name)) if self.users else []
            if using:
                raise ConflictError(f"bandwidth group {name!r} is used by: {', '.join(using)}")
            del groups[name]

    def list(self) -> list[tuple[str, int]]:
        with self._locked() as groups:
            return sorted(groups.items())


def json_store(state_dir: Path) -> BandwidthStore:
    return JsonFileStore(state_dir / STORE_FILE)


class RegistryStore:
    """Groups in the media registry, via the running server or the database (module doc)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def _call(self, op: str, **params: Any) -> Any:
        return open_backend(self.state_dir).call(op, **params)

    def add(self, name: str, limit: int) -> None:
        self._call("bandwidth.add", name=name, limit=limit)

    def set(self, name: str, limit: int) -> None:
        self._call("bandwidth.set", name=name, limit=limit)

    def remove(self, name: str) -> None:
        self._call("bandwidth.remove", name=name)

    def list(self) -> list[tuple[str, int]]:
        return [(g["name"], int(g["limit"])) for g in self._call("bandwidth.list")]


def registry_store(state_dir: Path) -> BandwidthStore:
    return RegistryStore(state_dir)


STORE_FACTORY: Callable[[Path], BandwidthStore] = registry_store


# ---- the commands -------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bandwidth", help="bandwidth groups shared by media (like "
                       "VBoxManage bandwidthctl)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda _a: _usage(p))
    cmds = p.add_subparsers(dest="bandwidth_command", metavar="COMMAND")
    for name, helptext in (("add", "create a group"), ("set", "change a group's limit")):
        c = cmds.add_parser(name, help=helptext)
        c.add_argument("name")
        c.add_argument("--limit", required=True, metavar="LIMIT",
                       help="e.g. 20M (MB/s), 512K, 100m (Mbit/s); 0 = unlimited")
        c.set_defaults(func=_add if name == "add" else _set)
        _state_dir(c)
    r = cmds.add_parser("remove", help="delete a group no medium uses")
    r.add_argument("name")
    r.set_defaults(func=_remove)
    _state_dir(r)
    ls = cmds.add_parser("list", help="show the groups")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_list)
    _state_dir(ls)


def _state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=None,
                   help="state directory (default $BLOCKYARD_STATE_DIR or "
                        "$XDG_STATE_HOME/blockyard)")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _store(args: argparse.Namespace) -> BandwidthStore:
    return STORE_FACTORY(state_dir_of(args))


def _add(args: argparse.Namespace) -> int:
    name, limit = check_group_name(args.name), parse_limit(args.limit)
    _store(args).add(name, limit)
    print(f"bandwidth group {name!r} added: {describe_limit(limit)}")
    return 0


def _set(args: argparse.Namespace) -> int:
    limit = parse_limit(args.limit)
    _store(args).set(args.name, limit)
    print(f"bandwidth group {args.name!r} set to {describe_limit(limit)}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    _store(args).remove(args.name)
    print(f"bandwidth group {args.name!r} removed")
    return 0


def _list(args: argparse.Namespace) -> int:
    groups = _store(args).list()
    if args.json:
        rows: list[dict[str, Any]] = [{"name": n, "limit": lim, "limit_text": format_limit(lim)}
                                      for n, lim in groups]
        print(json.dumps(rows, indent=2))
        return 0
    if not groups:
        print("no bandwidth groups")
        return 0
    width = max(4, *(len(n) for n, _ in groups))
    print(f"{'NAME':<{width}}  {'LIMIT':>8}  BYTES/S")
    for name, limit in groups:
        shown = format_limit(limit) if limit else "unlimited"
        print(f"{name:<{width}}  {shown:>8}  {limit}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m blockyard.cli.bandwidth ...`` until ``blockyard`` lists this group."""
    parser = argparse.ArgumentParser(prog="blockyard")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bandwidth", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except BlockyardError as exc:
        print(f"blockyard: {exc}", file=sys.stderr)
        return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
