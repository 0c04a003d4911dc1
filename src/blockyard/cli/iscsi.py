"""``blockyard iscsi``: the iSCSI command group (target side for now).

Serving happens through ``blockyard serve FILE --iscsi HOST:PORT`` (each file
is LUN 0 of ``iqn.2026-11.org.blockyard:<name>``) or, for experiments with
per-file flags and CHAP, ``python -m blockyard.transport.iscsi_target``.
Initiator commands (discover, probe) arrive with the integrated initiator.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("iscsi", help="iSCSI helpers (see `blockyard serve --iscsi`)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
