"""PDU framing on a byte stream: BHS, AHS, digests, padding (RFC 7143 §11.2).

``PduReader`` is the receive half: ``feed(bytes)`` appends to one buffer,
``next_pdu()`` returns the next complete PDU or None.  The PDU's ``data`` is
a memoryview into the reader's buffer and is valid only until the next call
into the reader: consumers copy what they keep (exactly once: into a write
buffer, into ``bytes`` for text keys).  ``get_buffer``/``buffer_updated``
let an ``asyncio.BufferedProtocol`` receive straight into that buffer.

``frame()`` / ``encode_pdu()`` are the send half: a list of buffers (header
with its digest, data, padding, data digest) for ``writelines``, so payloads
are never joined.

Errors: a header digest mismatch or an impossible length is fatal (the
stream can no longer be trusted; §7.8 leaves only connection recovery at
ErrorRecoveryLevel 0).  A data digest mismatch or an unknown opcode is not:
the PDU is skipped and a ``PduRejected`` carries the header to echo in a
Reject (§11.17).
"""

from __future__ import annotations

import struct

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.constants import BHS_SIZE, DIGEST_SIZE, MAX_DATA_SEGMENT, RejectReason
from blockyard.iscsi.digest import crc32c, digest_bytes, padding_for
from blockyard.iscsi.pdu import DECODERS, Buffer, Pdu

_WORD = struct.Struct(">I")
_LE32 = struct.Struct("<I")
_COMPACT_AT = 1 << 20


class PduRejected(RemoteProtocolError):
    """A PDU that must be answered with a Reject (``code``) and otherwise ignored."""

    def __init__(self, message: str, reason: int, header: bytes, pdu: Pdu | None = None) -> None:
        super().__init__(message, reason, fatal=False)
        self.header = header
        self.pdu = pdu  # the decoded header (data dropped), when the opcode is known


class PduReader:
    """Splits a byte stream into PDUs; see the module docstring."""

    def __init__(self, max_data_segment: int = 8192) -> None:
        self.header_digest = False
        self.data_digest = False
        self.max_data_segment = max_data_segment
        self._hpos = self._hlen = 0
        self._buf = bytearray()
        self._pos = 0
        self._end = 0  # bytes of _buf holding received data (get_buffer may over-allocate)
        self._views: list[memoryview] = []

    # ---- input -------------------------------------------------------------------
    def feed(self, data: Buffer) -> None:
        n = len(data)
        if n:
            mv = self.get_buffer(n)
            mv[:n] = data
            mv.release()
            self.buffer_updated(n)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Room for at least ``sizehint`` (or 64 KiB) more bytes, at the end of the data."""
        self._release()
        want = max(sizehint, 65536)
        if self._pos == self._end:
            self._pos = self._end = 0  # everything consumed: reuse the buffer from the start
        elif self._pos >= _COMPACT_AT or len(self._buf) - self._end < want:
            self._compact()
        if len(self._buf) - self._end < want:
            self._grow(self._end + want)
        view = memoryview(self._buf)[self._end:]
        self._views.append(view)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        self._release()
        self._end += nbytes

    @property
    def buffered(self) -> int:
        return self._end - self._pos

    def _compact(self) -> None:
        """Move the unconsumed bytes to the front (in place: no allocation)."""
        n = self._end - self._pos
        self._buf[:n] = self._buf[self._pos:self._end]
        self._pos, self._end = 0, n

    def _grow(self, size: int) -> None:
        try:
            self._buf.extend(bytes(size - len(self._buf)))
        except BufferError:  # a consumer kept a view past its lifetime: leave it the old one
            new = bytearray(size)
            new[:self._end] = self._buf[:self._end]
            self._buf = new

    def _release(self) -> None:
        # uvloop still holds the buffer it received into while it calls
        # buffer_updated(): such a view is released on a later call instead.
        keep = []
        for view in self._views:
            try:
                view.release()
            except BufferError:
                keep.append(view)
        self._views = keep

    # ---- output ------------------------------------------------------------------
    def next_pdu(self) -> Pdu | None:
        """The next complete PDU, or None until more bytes arrive."""
        if self._views:
            self._release()
        buf, pos = self._buf, self._pos
        avail = self._end - pos
        if avail < BHS_SIZE:
            return None
        word = _WORD.unpack_from(buf, pos + 4)[0]
        hlen = BHS_SIZE + ((word >> 24) << 2)
        dsl = word & MAX_DATA_SEGMENT
        hd = DIGEST_SIZE if self.header_digest else 0
        dd = DIGEST_SIZE if self.data_digest and dsl else 0
        total = hlen + hd + ((dsl + 3) & ~3) + dd
        if avail < total:
            if dsl > self.max_data_segment:
                self._too_long(dsl)
            return None
        self._pos = pos + total
        self._hpos, self._hlen = pos, hlen
        if hd and crc32c(self.last_header) != _LE32.unpack_from(buf, pos + hlen)[0]:
            raise RemoteProtocolError("header digest error", RejectReason.PROTOCOL_ERROR)
        if dsl > self.max_data_segment:
            self._too_long(dsl)
        cls = DECODERS.get(buf[pos] & 0x3F)
        if cls is None:
            raise PduRejected(f"unknown opcode 0x{buf[pos] & 0x3F:02x}",
                              RejectReason.COMMAND_NOT_SUPPORTED, self.last_header[:48])
        fields = cls.STRUCT.unpack_from(buf, pos)
        ahs = bytes(buf[pos + BHS_SIZE:pos + hlen]) if hlen > BHS_SIZE else b""
        if not dsl:
            return cls.from_fields(fields, ahs, b"")
        start = pos + hlen + hd
        data = memoryview(buf)[start:start + dsl]
        self._views.append(data)
        if dd:
            self._check_data_digest(cls, fields, ahs, start, dsl)
        return cls.from_fields(fields, ahs, data)

    @property
    def last_header(self) -> bytes:
        """BHS + AHS of the PDU ``next_pdu`` returned last (until the buffer moves on)."""
        return bytes(self._buf[self._hpos:self._hpos + self._hlen])

    def _check_data_digest(self, cls: type[Pdu], fields: tuple, ahs: bytes, start: int,
                           dsl: int) -> None:
        padded = (dsl + 3) & ~3
        got = _LE32.unpack_from(self._buf, start + padded)[0]
        if crc32c(self._buf[start:start + padded]) != got:
            raise PduRejected("data digest error", RejectReason.DATA_DIGEST_ERROR,
                              self.last_header[:48], cls.from_fields(fields, ahs, b""))

    def _too_long(self, dsl: int) -> None:
        raise RemoteProtocolError(
            f"data segment of {dsl} bytes exceeds MaxRecvDataSegmentLength "
            f"{self.max_data_segment}", RejectReason.PROTOCOL_ERROR)


def frame(header: bytes, data: Buffer, header_digest: bool, data_digest: bool) -> list[Buffer]:
    """Buffers for one PDU: header (+digest), data, padding (+digest)."""
    if header_digest:
        header += digest_bytes(header)
    n = len(data)
    if not n:
        return [header]
    pad = padding_for(n)
    out: list[Buffer] = [header, data]
    if pad:
        out.append(pad)
    if data_digest:
        out.append(digest_bytes(data, pad))
    return out


def encode_pdu(pdu: Pdu, header_digest: bool = False, data_digest: bool = False) -> list[Buffer]:
    return frame(pdu.encode_header(), pdu.data, header_digest, data_digest)


def encode_pdu_bytes(pdu: Pdu, header_digest: bool = False, data_digest: bool = False) -> bytes:
    """The whole PDU as one bytes object (tests, login-phase traffic)."""
    return b"".join(bytes(b) for b in encode_pdu(pdu, header_digest, data_digest))
