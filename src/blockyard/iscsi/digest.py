"""Header and data digests: CRC32C (Castagnoli), RFC 7143 §11.2.3 and §13.1.

The digest covers the BHS plus AHS (header digest) or the data segment plus
its padding (data digest) and travels least significant byte first: a
digest over 32 zero bytes is 0x8a9136aa and goes on the wire as
``aa 36 91 8a`` (the RFC's test vector).  google_crc32c only takes
``bytes``, so views are copied first; data digests are rare in practice
(libiscsi 1.19 never asks for them).
"""

from __future__ import annotations

import struct

import google_crc32c

_LE32 = struct.Struct("<I")
PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by len % 4


def crc32c(*parts: bytes | bytearray | memoryview) -> int:
    crc = 0
    for part in parts:
        if part:
            crc = google_crc32c.extend(crc, part if type(part) is bytes else bytes(part))
    return crc


def digest_bytes(*parts: bytes | bytearray | memoryview) -> bytes:
    """The 4 digest bytes as sent on the wire."""
    return _LE32.pack(crc32c(*parts))


def padding_for(length: int) -> bytes:
    """Zero bytes that pad a segment of ``length`` to a multiple of 4 (§11.2.4)."""
    return PADDING[length & 3]
