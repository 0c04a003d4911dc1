"""``blockyard medium create|info|check|compact|resize`` -- the file half of ``medium``.

These commands work on image files directly through the format registry
(``block/formats``: ``create_image``, ``open_image``, ``probe``), so they
serve every format: VDI, VMDK, VHD, Parallels, raw (ISO read-only).

  blockyard medium create FILE --size 10G [--format vdi] [--variant dynamic]
  blockyard medium info FILE [--json]
  blockyard medium check FILE [--repair]     exit 4 while errors remain (leaks alone: 0)
  blockyard medium compact FILE
  blockyard medium resize FILE --size 20G [--force]

``--format`` names the format instead of probing the content (needed for a
fixed VHD, whose only footer is at the end of the file).  Long operations
draw a progress bar on stderr when it is a terminal and stay quiet when it is
piped.  Errors are one line on stderr and a non-zero exit (``cli.main``).

The registry half (add, list, modify, clone, ...) adds its own sub-commands
to the same ``medium`` group: ``medium_group`` creates the group once and
returns its sub-parsers to whoever registers first; each command here is a
builder in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from blockyard.block.formats import DRIVERS, create_image, open_image
from blockyard.block.formats.base import CheckReport, ImageInfo, ImageLayer
from blockyard.errors import MediaError
from blockyard.util.progress import ProgressBar
from blockyard.util.units import format_size, parse_size

Sub = argparse._SubParsersAction  # type: ignore[type-arg]
CREATE_FORMATS = ["vdi", "vmdk", "vhd", "parallels", "raw"]
VARIANTS = ["dynamic", "fixed", "split2g", "stream"]
EXIT_ERRORS = 4  # the MediaError status: the image has errors


def medium_group(sub: Sub) -> Sub:
    """The ``medium`` group's sub-parsers, created on first use (shared with the registry)."""
    medium = sub.choices.get("medium")
    if medium is None:
        medium = sub.add_parser("medium", help="image files and the media registry",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        medium.add_subparsers(dest="medium_command", metavar="COMMAND")
        medium.set_defaults(func=lambda _args: _usage(medium))
    return next(a for a in medium._actions if isinstance(a, argparse._SubParsersAction))


def register(sub: Sub) -> None:
    group = medium_group(sub)
    for name, build in COMMANDS.items():
        if name not in group.choices:
            build(group)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


async def _with_image(args: argparse.Namespace, read_only: bool,
                      work: Callable[[ImageLayer], Coroutine[Any, Any, int]]) -> int:
    img = open_image(args.file, read_only=read_only, fmt=args.format)
    try:
        return await work(img)
    except OSError as exc:  # a failing disk under a maintenance operation: still one line
        raise MediaError(f"{args.file}: {exc.strerror or exc}") from None
    finally:
        await img.close()


def _file_parser(group: Sub, name: str, handler: Callable[[argparse.Namespace], int],
                 text: str) -> argparse.ArgumentParser:
    p = group.add_parser(name, help=text, description=text)
    p.add_argument("file", metavar="FILE")
    p.set_defaults(func=handler)
    return p


def _format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", "-f", choices=list(DRIVERS),
                   help="image format (default: judged by the content)")


# ---- create ------------------------------------------------------------------------------
def _build_create(group: Sub) -> None:
    p = _file_parser(group, "create", _create, "create a new image file")
    p.add_argument("--size", help="virtual size: 4096, 512M, 10G, 1.5T ... (not with --parent)")
    p.add_argument("--format", "-f", choices=CREATE_FORMATS, default=None,
                   help="image format (default vdi; with --parent the parent's when it can "
                        "have children, else vdi)")
    p.add_argument("--variant", choices=VARIANTS, default="dynamic",
                   help="dynamic (default), fixed, split2g or stream (VMDK)")
    p.add_argument("--parent", metavar="PARENT",
                   help="make a differencing image over this image (and its chain)")


def _create(args: argparse.Namespace) -> int:
    if args.parent:
        return _run(_create_child(args))
    if not args.size:
        raise MediaError(f"{args.file}: give --size (or --parent for a differencing image)")
    size = parse_size(args.size)
    args.format = args.format or "vdi"

    async def go() -> int:
        img = create_image(args.file, size, args.format, args.variant)
        await img.close()
        print(f"{args.file}: created {args.format} {args.variant} image of {format_size(size)}")
        return 0
    return _run(go())


async def _create_child(args: argparse.Namespace) -> int:
    """``create CHILD --parent PARENT``: like VBoxManage createmedium --diffparent."""
    from blockyard.block.chain_facts import facts_of
    from blockyard.block.chain_find import lun_facts
    from blockyard.block.chain_link import child_format, create_child
    from blockyard.media.chain_open import top_image
    from blockyard.media.inspect import is_remote, stored_url
    from blockyard.media.remote_chain import open_path

    if args.size or args.variant != "dynamic":
        raise MediaError(f"{args.file}: a differencing image takes its size from its parent "
                         "and is always dynamic; drop --size and --variant")
    # the whole chain must open; a remote LUN is logged into (its URL is kept without secrets)
    parent = await open_path(args.parent, read_only=True)
    try:
        remote = is_remote(args.parent)
        facts = lun_facts(stored_url(args.parent), parent) if remote else \
            facts_of(top_image(parent))
    finally:
        await parent.close()
    fmt = child_format(facts.format, args.format)
    child = create_child(os.path.abspath(args.file), facts, fmt)
    await child.close()
    shown = facts.path if facts.format == "iscsi" else args.parent  # a URL without secrets
    print(f"{args.file}: created {fmt} differencing image over {shown} "
          f"({format_size(facts.size)})")
    return 0


# ---- info ----------------------------------------------------------------------------------
def _build_info(group: Sub) -> None:
    p = _file_parser(group, "info", _info, "show an image file's format, sizes and identity")
    _format_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")


def _info(args: argparse.Namespace) -> int:
    async def show(img: ImageLayer) -> int:
        info = img.info()
        if args.json:
            print(json.dumps(info.as_dict(), indent=2, default=str))
        else:
            for key, value in info_lines(info):
                print(f"{key + ':':<20}{value}")
        return 0
    return _run(_with_image(args, True, show))


def info_lines(info: ImageInfo) -> list[tuple[str, str]]:
    """The human form of ``ImageInfo``: one (label, value) per line."""
    def size(n: int) -> str:
        return f"{format_size(n)} ({n} bytes)"
    geometry = "/".join(map(str, info.geometry)) if info.geometry else "-"
    lines = [("file", info.path), ("format", info.format), ("variant", info.variant),
             ("virtual size", size(info.virtual_size)),
             ("allocated size", size(info.allocated_size)),
             ("uuid", info.uuid or "-"), ("modification", info.modification_uuid or "-"),
             ("parent uuid", info.parent_uuid or "-"), ("parent hint", info.parent_hint or "-"),
             ("geometry (CHS)", geometry),
             ("block size", format_size(info.block_size) if info.block_size else "-"),
             ("not closed cleanly", "yes" if info.dirty else "no")]
    lines += [(key.replace("_", " "), _text(value)) for key, value in info.extra.items()
              if value not in (None, "", [], {})]
    return lines


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    return str(value)


# ---- check -------------------------------------------------------------------------------
def _build_check(group: Sub) -> None:
    p = _file_parser(group, "check", _check, "check an image file's metadata; --repair fixes "
                     "what is safe to fix")
    _format_option(p)
    p.add_argument("--repair", action="store_true", help="repair what is safe (opens read-write)")


def _check(args: argparse.Namespace) -> int:
    async def check(img: ImageLayer) -> int:
        report = img.check(repair=args.repair)
        print_report(report)
        return EXIT_ERRORS if report.errors else 0
    return _run(_with_image(args, not args.repair, check))


def print_report(report: CheckReport) -> None:
    for kind, items in (("error", report.errors), ("leak", report.leaks),
                        ("repaired", report.repaired)):
        for item in items:
            print(f"{report.path}: {kind}: {item}")
    if report.clean:
        print(f"{report.path}: no errors")
    else:
        print(f"{report.path}: {len(report.errors)} error(s), {len(report.leaks)} leak(s)")


# ---- compact, resize -------------------------------------------------------------------------
def _build_compact(group: Sub) -> None:
    p = _file_parser(group, "compact", _compact, "free blocks that read as zeros and shrink "
                     "the file")
    _format_option(p)


def _compact(args: argparse.Namespace) -> int:
    async def compact(img: ImageLayer) -> int:
        with ProgressBar(f"compacting {os.path.basename(args.file)}") as bar:
            freed = await img.compact(bar)
        print(f"{args.file}: released {format_size(freed)}")
        return 0
    return _run(_with_image(args, False, compact))


def _build_resize(group: Sub) -> None:
    p = _file_parser(group, "resize", _resize, "change an image's virtual size")
    _format_option(p)
    p.add_argument("--size", required=True, help="new virtual size")
    p.add_argument("--force", action="store_true",
                   help="allow shrinking below data the image holds")


def _resize(args: argparse.Namespace) -> int:
    size = parse_size(args.size)

    async def resize(img: ImageLayer) -> int:
        await img.resize(size, force=args.force)
        print(f"{args.file}: virtual size now {format_size(img.size)}")
        return 0
    return _run(_with_image(args, False, resize))


COMMANDS: dict[str, Callable[[Sub], None]] = {
    "create": _build_create, "info": _build_info, "check": _build_check,
    "compact": _build_compact, "resize": _build_resize,
}
