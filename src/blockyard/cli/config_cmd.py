"""``blockyard config check FILE``: every problem in a configuration file, at once.

Prints ``FILE: ok`` and a one-line summary when the file is sound; else one
line per problem (``FILE:LINE: KEY: message``) on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from blockyard.config import check_file, load_file


def _check(args: argparse.Namespace) -> int:
    problems = check_file(args.file)
    if problems:
        for line in problems:
            print(f"blockyard: {line}", file=sys.stderr)
        return 2
    cfg = load_file(args.file)
    parts = [f"{len(cfg.controllers)} controllers", f"{len(cfg.attachments)} attachments",
             f"nbd on {', '.join(cfg.nbd.listen) or 'nothing'}"]
    if cfg.exports:
        parts.append(f"{len(cfg.exports)} legacy exports")
    print(f"{args.file}: ok ({'; '.join(parts)})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = sub.add_parser("config", help="configuration files", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    gsub = group.add_subparsers(dest="config_command", metavar="COMMAND")
    p = gsub.add_parser("check", help="check a configuration file; report every problem")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=_check)
