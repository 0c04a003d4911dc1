"""The ``blockyard`` command line.

Each sub-command group lives in its own module with a ``register(sub)``
function that adds its parsers and sets ``func`` (a handler taking the parsed
namespace and returning an exit status).  Errors derived from
``BlockyardError`` print one line on stderr and exit with that error's
``exit_status``: 2 usage/config, 3 not found, 4 media, 5 I/O, 6 conflict.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from blockyard import __version__
from blockyard.errors import BlockyardError

GROUPS = ["blockyard.cli.serve", "blockyard.cli.medium", "blockyard.cli.controller",
          "blockyard.cli.config_cmd", "blockyard.cli.iscsi", "blockyard.cli.bandwidth",
          "blockyard.cli.snapshot"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blockyard", description="Network block server: NBD and iSCSI over disk images.")
    parser.add_argument("--version", action="version", version=f"blockyard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in GROUPS:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # a group still being built must not break the rest
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BlockyardError as exc:
        print(f"blockyard: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
