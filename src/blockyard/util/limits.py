"""Bandwidth limits as VBoxManage takes them: ``parse_limit('20M')`` -> bytes per second.

The units follow ``VBoxManage bandwidthctl ... --limit <MBps>[k|m|g|K|M|G]``
(VirtualBox manual, "VBoxManage bandwidthctl" and section 5.8, and VBoxManage's
own parser, which is the authority where the manual is silent):

===========  ==============================  ===================
suffix       meaning                         bytes per second
===========  ==============================  ===================
(none)       megabytes per second            n * 2**20
``K``        kilobytes per second            n * 2**10
``M``        megabytes per second            n * 2**20
``G``        gigabytes per second            n * 2**30
``k``        kilobits per second             n * 125
``m``        megabits per second             n * 125_000
``g``        gigabits per second             n * 125_000_000
===========  ==============================  ===================

So the byte units are binary (M = 2**20, as VirtualBox multiplies by its
``_1M``) and the bit units are decimal (1 kbit = 1000 bits), exactly as
VBoxManage does it.  The number is a whole number, as in VBoxManage; a ``B``,
``bps`` or ``/s`` after the unit is refused rather than guessed at.  ``0``
means unlimited.  Negative, unparsable and absurd values (above 1 TB/s)
raise ``ConfigError`` with one line that says what was wrong and shows
examples.
"""

from __future__ import annotations

import re

from blockyard.errors import ConfigError

UNLIMITED = 0
MAX_LIMIT = 10**12  # 1 TB/s: anything above is a typo, not a disk
_MULTIPLIERS = {
    "": 1 << 20,
    "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
    "k": 125, "m": 125_000, "g": 125_000_000,
}
_LIMIT_RE = re.compile(r"([+-]?\d+)([kmgKMG]?)")
_EXAMPLES = "examples: 20 or 20M (20 MB/s), 512K, 1G, 100m (100 Mbit/s), 0 (unlimited)"


def parse_limit(text: str | int) -> int:
    """Parse a VBoxManage-style limit into bytes per second (0 = unlimited).

    An ``int`` is read like a bare number on the command line: megabytes per
    second.  Use ``check_rate`` for a value already in bytes per second.
    """
    raw = str(text).strip()
    m = _LIMIT_RE.fullmatch(raw)
    if not m:
        raise ConfigError(f"cannot parse bandwidth limit {text!r} ({_EXAMPLES})")
    number, unit = int(m.group(1)), m.group(2)
    if number < 0:
        raise ConfigError(f"bandwidth limit must not be negative: {text!r} ({_EXAMPLES})")
    return check_rate(number * _MULTIPLIERS[unit], shown=raw)


def check_rate(rate: int, *, shown: str | None = None) -> int:
    """Validate a rate in bytes per second; return it or raise ConfigError."""
    what = shown if shown is not None else f"{rate} bytes/s"
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise ConfigError(f"bandwidth limit must be a whole number of bytes/s, not {rate!r}")
    if rate < 0:
        raise ConfigError(f"bandwidth limit must not be negative: {what}")
    if rate > MAX_LIMIT:
        raise ConfigError(f"bandwidth limit {what} is absurd (more than 1 TB/s); {_EXAMPLES}")
    return rate


def format_limit(rate: int) -> str:
    """Render bytes/s in the largest exact byte unit: ``20M``, ``512K``, ``125000``.

    The result parses back to the same rate with ``parse_limit`` when it has a
    unit; a plain number of bytes/s that fits no unit is shown with a ``B/s``
    suffix (not parseable on purpose: it is for display).
    """
    if rate == UNLIMITED:
        return "0"
    for unit, mult in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if rate % mult == 0:
            return f"{rate // mult}{unit}"
    for unit, mult in (("g", 125_000_000), ("m", 125_000), ("k", 125)):
        if rate % mult == 0:
            return f"{rate // mult}{unit}"
    return f"{rate}B/s"


def describe_limit(rate: int) -> str:
    """Human text: ``20 MiB/s (20M)`` or ``unlimited``."""
    if rate == UNLIMITED:
        return "unlimited"
    return f"{rate / (1 << 20):.3g} MiB/s ({format_limit(rate)})"
