"""``/metrics`` in the Prometheus text exposition format (version 0.0.4).

Counters come from each export's ``stats`` (requests and bytes served) and
gauges from the live connection list and the registry; label values are
escaped as the format requires.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from blockyard.media.context import Context


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(name: str, kind: str, help_text: str,
            samples: list[tuple[dict[str, Any], float]]) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        number = str(int(value)) if float(value).is_integer() else repr(float(value))
        out.append(f"{name}{{{text}}} {number}" if text else f"{name} {number}")
    return out


def render_metrics(ctx: Context, live_views: dict[str, Callable[[], Any]]) -> str:
    exports = live_views["live.exports"]()
    sessions = live_views["live.sessions"]()
    per_export = Counter(s["export"] for s in sessions)
    media = ctx.registry.media()
    lines = []
    lines += _family("blockyard_export_requests_total", "counter", "Requests served per export.",
                     [({"export": e["name"]}, e["requests"]) for e in exports])
    lines += _family("blockyard_export_bytes_total", "counter",
                     "Bytes read or written per export.",
                     [({"export": e["name"]}, e["bytes"]) for e in exports])
    lines += _family("blockyard_export_size_bytes", "gauge", "Size of each export.",
                     [({"export": e["name"]}, e["size"]) for e in exports])
    lines += _family("blockyard_export_sessions", "gauge", "Connections using each export.",
                     [({"export": e["name"]}, per_export.get(e["name"], 0)) for e in exports])
    lines += _family("blockyard_sessions", "gauge", "Open NBD connections.",
                     [({}, len(sessions))])
    kinds = Counter((m.kind, m.accessible) for m in media)
    lines += _family("blockyard_media", "gauge", "Registered media by kind and accessibility.",
                     [({"kind": k, "accessible": str(a).lower()}, n)
                      for (k, a), n in sorted(kinds.items())])
    lines += _family("blockyard_attachments", "gauge", "Attachments in the registry.",
                     [({}, len(ctx.registry.attachments()))])
    return "\n".join(lines) + "\n"
