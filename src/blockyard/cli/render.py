"""Printing registry objects for people: tables, trees, key/value blocks.

Every listing command also has ``--json``, which prints what the control
API returned, unchanged; these functions are only for the human form.
Sizes print with units (``util.units.format_size``).
"""

from __future__ import annotations

import json
from typing import Any

from blockyard.util.units import format_size


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _state(m: dict[str, Any]) -> str:
    if not m["accessible"]:
        return "inaccessible"
    if m.get("in_use"):
        return "served"
    return "attached" if m.get("attachments") else "-"


def medium_row(m: dict[str, Any], indent: int = 0) -> list[str]:
    return [m["uuid"], m["kind"], m["format"], format_size(m["virtual_size"]),
            format_size(m["allocated_size"]), m["write_mode"], _state(m),
            "  " * indent + m["location"]]


MEDIA_HEADER = ["UUID", "KIND", "FORMAT", "SIZE", "ALLOC", "MODE", "STATE", "LOCATION"]


def media_table(media: list[dict[str, Any]], tree: bool = False) -> None:
    if not tree:
        table([medium_row(m) for m in media], MEDIA_HEADER)
        return
    known = {m["uuid"] for m in media}
    kids: dict[str | None, list[dict[str, Any]]] = {}
    for m in media:
        parent = m["parent_uuid"] if m["parent_uuid"] in known else None
        kids.setdefault(parent, []).append(m)
    rows: list[list[str]] = []

    def walk(parent: str | None, depth: int) -> None:
        for m in kids.get(parent, []):
            rows.append(medium_row(m, depth))
            walk(m["uuid"], depth + 1)
    walk(None, 0)
    table(rows, MEDIA_HEADER)


def medium_block(m: dict[str, Any]) -> None:
    lines = [
        ("UUID", m["uuid"] + (" (assigned by the registry)"
                              if m.get("uuid_source") == "registry" else "")),
        ("Location", m["location"]), ("Kind", m["kind"]), ("Format", m["format"]),
        ("Write mode", m["write_mode"]), ("Autoreset", "on" if m["autoreset"] else "off"),
        ("Size", f"{format_size(m['virtual_size'])} ({m['virtual_size']} bytes)"),
        ("Allocated", format_size(m["allocated_size"])),
        ("Description", m["description"] or "-"),
        ("Bandwidth group", m.get("bandwidth_group") or "-"),
        ("Accessible", "yes" if m["accessible"] else f"no: {m['last_error']}"),
        ("Parent", f"{m['parent_uuid']} ({m.get('parent_location')})"
         if m.get("parent_uuid") else "-"),
        ("Children", ", ".join(c["location"] for c in m.get("children", [])) or "-"),
        ("Attached", ", ".join(f"{a['controller']}:{a['port']} (export {a['export_name']})"
                               for a in m.get("attachments", [])) or "-"),
    ]
    image = m.get("image") or {}
    if image:
        lines.append(("Variant", str(image.get("variant"))))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k + ':':<{width + 1}} {v}")
