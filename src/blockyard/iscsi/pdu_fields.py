"""BHS fields that PDUs of both directions pack the same way (RFC 7143 §11).

A request and its response share these layouts, so ``pdu_initiator`` and
``pdu_target`` pack and unpack them here rather than each on its own:

* byte 1 of Login Request and Login Response (§11.12.1, §11.13.1): the T and
  C bits, CSG in bits 2-3, NSG in bits 0-1;
* byte 1 of Text Request and Text Response (§11.10.1, §11.11.1): F and C;
* a 64- or 32-bit word holding two fields with the low one in its last 16
  bits: ISID and TSIH (bytes 8-15 of the login PDUs), Time2Wait and
  Time2Retain (Logout Response), Parameter2 and Parameter3 (Async Message).
"""

from __future__ import annotations

from blockyard.iscsi.constants import FINAL_BIT, LOGIN_CONTINUE, LOGIN_TRANSIT, TEXT_CONTINUE


def login_flags(transit: bool, cont: bool, csg: int, nsg: int) -> int:
    flags = (LOGIN_TRANSIT if transit else 0) | (LOGIN_CONTINUE if cont else 0)
    return flags | (csg & 3) << 2 | (nsg & 3)


def split_login_flags(flags: int) -> tuple[bool, bool, int, int]:
    """(transit, cont, csg, nsg) of a login PDU's byte 1."""
    return bool(flags & LOGIN_TRANSIT), bool(flags & LOGIN_CONTINUE), (flags >> 2) & 3, flags & 3


def text_flags(final: bool, cont: bool) -> int:
    return (FINAL_BIT if final else 0) | (TEXT_CONTINUE if cont else 0)


def split_text_flags(flags: int) -> tuple[bool, bool]:
    """(final, cont) of a text PDU's byte 1."""
    return bool(flags & FINAL_BIT), bool(flags & TEXT_CONTINUE)


def halves(high: int, low: int) -> int:
    """A word of ``high`` above a 16-bit ``low``."""
    return high << 16 | low


def split_halves(word: int) -> tuple[int, int]:
    """(high, low 16 bits) of a word packed by ``halves``."""
    return word >> 16, word & 0xFFFF
