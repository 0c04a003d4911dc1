"""Text keys on the wire: ``key=value`` pairs, each ended by a NUL (RFC 7143 §6.1).

Login and Text PDUs carry them; a key list may be split over several PDUs
with the C bit (``TextAccumulator``).  Values are text, numbers (decimal or
``0x`` hex), booleans (``Yes``/``No``), comma-separated lists, or binary
(``0x`` hex or ``0b`` base64, §6.1 "binary-value").
"""

from __future__ import annotations

import base64
import binascii
import re

from blockyard.iscsi.pdu import Buffer

MAX_KEY_NAME = 63  # §6.1: key names are at most 63 bytes
MAX_VALUE = 8192  # the longest value we accept (binary values: §6.1)
_KEY_RE = re.compile(r"[A-Za-z0-9.\-+@_]+\Z")


class TextFormatError(ValueError):
    """The data segment does not hold well-formed key=value pairs."""


def parse_text(data: Buffer) -> list[tuple[str, str]]:
    """Decode a complete text data segment into (key, value) pairs, in order."""
    raw = bytes(data)
    if not raw:
        return []
    if not raw.endswith(b"\0"):
        raise TextFormatError("text data does not end with a NUL")
    pairs = []
    for item in raw[:-1].split(b"\0"):
        if not item:
            continue  # tolerate padding NULs between pairs
        key, sep, value = item.partition(b"=")
        if not sep:
            raise TextFormatError(f"no '=' in {item[:40]!r}")
        try:
            k, v = key.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextFormatError("text keys must be UTF-8") from exc
        if len(key) > MAX_KEY_NAME or not _KEY_RE.match(k):
            raise TextFormatError(f"bad key name {k[:70]!r}")
        if len(value) > MAX_VALUE:
            raise TextFormatError(f"value of {k} is too long")
        pairs.append((k, v))
    return pairs


def encode_text(pairs: list[tuple[str, str]] | dict[str, str]) -> bytes:
    items = pairs.items() if isinstance(pairs, dict) else pairs
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in items)


def parse_number(value: str) -> int:
    """A numerical value: decimal or 0x-hex (§6.1 "numerical-value")."""
    if value[:2] in ("0x", "0X"):
        return int(value[2:], 16)
    if not value.isdigit():
        raise ValueError(f"not a number: {value!r}")
    return int(value)


def parse_boolean(value: str) -> bool:
    if value == "Yes":
        return True
    if value == "No":
        return False
    raise ValueError(f"not a boolean: {value!r}")


def format_boolean(value: bool) -> str:
    return "Yes" if value else "No"


def parse_binary(value: str) -> bytes:
    """A binary value: 0x-hex or 0b-base64 (§6.1 "binary-value")."""
    prefix, body = value[:2], value[2:]
    try:
        if prefix in ("0x", "0X"):
            if len(body) % 2:
                body = "0" + body
            return bytes.fromhex(body)
        if prefix in ("0b", "0B"):
            return base64.b64decode(body, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"bad binary value {value[:40]!r}") from exc
    raise ValueError(f"binary value without 0x/0b prefix: {value[:40]!r}")


def format_hex(value: bytes) -> str:
    return "0x" + value.hex()


class TextAccumulator:
    """Collects the data of a C-bit continued key list until the last PDU (§6.1)."""

    def __init__(self, limit: int = 65536) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.limit = limit

    def add(self, data: Buffer) -> None:
        self._size += len(data)
        if self._size > self.limit:
            raise TextFormatError("continued text exceeds our limit")
        self._parts.append(bytes(data))

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        return out

    @property
    def pending(self) -> bool:
        return bool(self._parts)


def split_text(data: bytes, max_segment: int) -> list[bytes]:
    """Cut a text payload into chunks of at most ``max_segment`` for C-bit continuation."""
    if len(data) <= max_segment:
        return [data]
    return [data[i:i + max_segment] for i in range(0, len(data), max_segment)]
