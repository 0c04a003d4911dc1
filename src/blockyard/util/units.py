"""Sizes with units, both ways: ``parse_size('1.5G')`` and ``format_size(n)``.

Binary multiples throughout (K = 1024), as VBoxManage and qemu-img print them.
"""

from __future__ import annotations

import re

from blockyard.errors import ConfigError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int, *, default_unit: str = "") -> int:
    """Parse ``10G``, ``512M``, ``1.5T``, ``4096`` into bytes; raise ConfigError."""
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"size must not be negative: {text}")
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"cannot parse size {text!r} (examples: 4096, 512M, 10G, 1.5T)")
    number, unit = m.group(1), (m.group(2) or default_unit).upper()
    value = float(number) * _UNITS[unit] if "." in number else int(number) * _UNITS[unit]
    if value != int(value):
        raise ConfigError(f"size {text!r} is not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    """Render bytes compactly: 1073741824 -> '1G', 1536 -> '1.5K', 1000 -> '1000'."""
    for unit in ("P", "T", "G", "M", "K"):
        mult = _UNITS[unit]
        if n >= mult:
            if n % mult == 0:
                return f"{n // mult}{unit}"
            return f"{n / mult:.1f}{unit}"
    return str(n)
