"""PDU framing on a byte stream: BHS, AHS, digests, padding (RFC 7143 §11.2).

``PduReader`` is the receive half: ``feed(bytes)`` appends to one buffer,
``next_pdu()`` returns the next complete PDU or None.  The PDU's ``data`` is
a memoryview into the reader's buffer and is valid only until the next call
into the reader: consumers copy what they keep (exactly once: into a write
buffer, into ``bytes`` for text keys).  ``get_buffer``/``buffer_updated``
let an ``asyncio.BufferedProtocol`` receive straight into that buffer.

Placement (the target's large Data-Out and immediate data): with a ``sink``
set, when the header of a PDU with at least ``MIN_PLACED`` bytes of data is
complete but its data is not, ``sink(cls, fields, length)`` may return the
data's destination (the command's buffer at that offset).  The data bytes
already received are copied there once and ``get_buffer`` then hands out
the rest of the destination, so the socket writes the payload where it
belongs; when it is full ``next_pdu`` returns the PDU with that destination
as its ``data``.  Only without data digests and for payloads that need no
padding; the sink returns None for anything odd, which takes the normal
path and its errors.

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
from collections.abc import Callable
from typing import Any

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.constants import BHS_SIZE, DIGEST_SIZE, MAX_DATA_SEGMENT, RejectReason
from blockyard.iscsi.digest import crc32c, digest_bytes, padding_for
from blockyard.iscsi.pdu import DECODERS, Buffer, Pdu

_WORD = struct.Struct(">I")
_LE32 = struct.Struct("<I")
_COMPACT_AT = 1 << 20
MIN_PLACED = 65536  # smaller payloads are simply copied

# (PDU class, its unpacked BHS fields, data length) -> where the data should go, or None
Sink = Callable[[type[Pdu], tuple[Any, ...], int], memoryview | None]


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
        self.sink: Sink | None = None
        self._place: memoryview | None = None  # the destination of the PDU being placed
        self._placed = 0  # bytes of it received
        self._place_pdu: tuple[type[Pdu], tuple[Any, ...], bytes] | None = None
        self._header = b""  # BHS + AHS of a placed PDU (``last_header``)
        self._declined = -1  # where the PDU starts whose placement the sink declined

    # ---- input -------------------------------------------------------------------
    def feed(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while len(view):  # more than one piece while a payload is being placed
            mv = self.get_buffer(len(view))
            n = min(len(mv), len(view))
            mv[:n] = view[:n]
            mv.release()
            self.buffer_updated(n)
            view = view[n:]

    def get_buffer(self, sizehint: int) -> memoryview:
        """Room for at least ``sizehint`` (or 64 KiB) more bytes, at the end of the data
        (or the rest of a payload being placed: then possibly less)."""
        place = self._place
        if place is not None and self._placed < len(place):
            return place[self._placed:]
        if self._views:
            self._release()
        want = sizehint if sizehint > 65536 else 65536
        if self._pos == self._end:
            self._pos = self._end = 0  # everything consumed: reuse the buffer from the start
        elif self._pos >= _COMPACT_AT or len(self._buf) - self._end < want:
            self._compact()
        if len(self._buf) - self._end < want:
            self._grow(self._end + want)
        # Not tracked in _views: the transport is done with it when it calls
        # buffer_updated, and _grow copies to a new buffer if a view is still alive.
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        place = self._place
        if place is not None and self._placed < len(place):
            self._placed += nbytes
            return
        if self._views:
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
        if self._place is not None:
            return self._placed_pdu()
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
            if dsl >= MIN_PLACED and self.sink is not None and not dd and not dsl & 3 \
                    and avail >= hlen + hd and pos != self._declined:
                self._try_place(pos, hlen, hd, dsl)
            return None
        self._pos = pos + total
        self._hpos, self._hlen = pos, hlen
        self._header = b""
        self._declined = -1
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
        if self._header:
            return self._header
        return bytes(self._buf[self._hpos:self._hpos + self._hlen])

    # ---- placement -----------------------------------------------------------------
    def _try_place(self, pos: int, hlen: int, hd: int, dsl: int) -> None:
        """The header at ``pos`` is complete, its data is not: ask the sink where it goes."""
        buf = self._buf
        cls = DECODERS.get(buf[pos] & 0x3F)
        if cls is None:
            return
        header = bytes(buf[pos:pos + hlen])
        if hd and crc32c(header) != _LE32.unpack_from(buf, pos + hlen)[0]:
            return  # next_pdu reports it once the PDU is complete
        assert self.sink is not None
        fields = cls.STRUCT.unpack_from(buf, pos)
        place = self.sink(cls, fields, dsl)
        if place is None:
            self._declined = pos  # do not ask again for this PDU
            return
        start = pos + hlen + hd
        have = self._end - start  # < dsl: the PDU is incomplete
        place[:have] = buf[start:self._end]
        self._pos = self._end  # everything received so far belongs to this PDU
        self._place, self._placed = place, have
        self._place_pdu = (cls, fields, header[BHS_SIZE:])
        self._header = header

    def _placed_pdu(self) -> Pdu | None:
        place = self._place
        assert place is not None and self._place_pdu is not None
        if self._placed < len(place):
            return None
        cls, fields, ahs = self._place_pdu
        self._place = self._place_pdu = None
        return cls.from_fields(fields, ahs, place)

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
