"""Serial-number arithmetic on 32-bit sequence numbers (RFC 1982, RFC 7143 §4.2.2.1).

CmdSN, ExpCmdSN, MaxCmdSN, StatSN, DataSN and R2TSN all wrap around at
2**32; "less than" means "less than in the half of the circle before", which
is undefined for numbers exactly 2**31 apart (we call those unordered and
answer False both ways).
"""

from __future__ import annotations

SERIAL_BITS = 32
MOD = 1 << SERIAL_BITS
HALF = 1 << (SERIAL_BITS - 1)
MASK = MOD - 1


def sn_add(a: int, n: int) -> int:
    """``a + n`` modulo 2**32 (RFC 1982 §3.1 allows n < 2**31)."""
    return (a + n) & MASK


def sn_lt(a: int, b: int) -> bool:
    """RFC 1982 §3.2: a < b."""
    return a != b and ((a < b and b - a < HALF) or (a > b and a - b > HALF))


def sn_gt(a: int, b: int) -> bool:
    return sn_lt(b, a)


def sn_le(a: int, b: int) -> bool:
    return a == b or sn_lt(a, b)


def sn_diff(a: int, b: int) -> int:
    """The signed distance b - a (``sn_add(a, sn_diff(a, b)) == b``), in (-2**31, 2**31]."""
    d = (b - a) & MASK
    return d - MOD if d > HALF else d


def in_window(sn: int, low: int, high: int) -> bool:
    """``low <= sn <= high`` in serial arithmetic; an empty window (high < low) holds nothing."""
    return sn_le(low, sn) and sn_le(sn, high)
