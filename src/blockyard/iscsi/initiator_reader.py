"""The initiator's PDU reader: Data-In payloads land straight in their command's buffer.

``framing.PduReader`` (the target's reader, reused for its rules) receives
everything into one buffer, so read data would be copied once more into the
command's buffer.  On the initiator almost every byte received is read
data, and that copy is the biggest cost of a bulk read in Python.  This
reader has the same interface (``feed``, ``get_buffer``/``buffer_updated``
for ``asyncio.BufferedProtocol``, ``next_pdu``, digest flags,
``max_data_segment``; a PDU's data is valid until the next ``get_buffer``)
plus one hook, ``placer``::

    scratch mode   bytes go to a scratch buffer; complete PDUs are decoded from it
                   (exactly the PduReader rules: BHS, AHS, header digest, padding,
                   data digest, §11.2).  When a Data-In header is complete but
                   its payload is not, and the placer returns the destination
                   (the command's buffer at the PDU's offset), the payload bytes
                   already here are copied there once and we switch to
    direct mode    ``get_buffer`` returns the rest of the destination, so the
                   socket writes the payload where it belongs; when it is full the
                   PDU is ready (``placed`` is that PDU: its data is already in
                   place) and padding is skipped in scratch mode.

Placement is skipped with data digests on (the digest is checked over the
received bytes by the normal path) and for small payloads.  The placer is
the connection: it validates the header (known task, DataSN, bounds) and
returns None for anything odd, which then takes the normal path and its
errors.  Errors are those of ``framing``: header digest mismatch and
impossible lengths are fatal, a data digest mismatch is ``PduRejected``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.constants import BHS_SIZE, DIGEST_SIZE, MAX_DATA_SEGMENT, Opcode, RejectReason
from blockyard.iscsi.digest import crc32c
from blockyard.iscsi.framing import PduRejected
from blockyard.iscsi.pdu import DECODERS, Buffer, Pdu
from blockyard.iscsi.pdu_target import DataIn

_WORD = struct.Struct(">I")
_LE32 = struct.Struct("<I")
SCRATCH = 1 << 16
MIN_PLACED = 8192  # smaller payloads are simply copied

Placer = Callable[[DataIn, int], memoryview | None]  # (header, payload length) -> destination


class InitiatorReader:
    def __init__(self, max_data_segment: int = 8192, placer: Placer | None = None) -> None:
        self.header_digest = False
        self.data_digest = False
        self.max_data_segment = max_data_segment
        self.placer = placer
        self.placed: Pdu | None = None
        self.last_header = b""
        self._buf = bytearray(SCRATCH)
        self._pos = self._end = 0
        self._skip = 0  # padding after a placed payload, still to be dropped
        self._direct: memoryview | None = None
        self._direct_pdu: DataIn | None = None
        self._ready: DataIn | None = None

    # ---- input -------------------------------------------------------------------
    def feed(self, data: Buffer) -> None:
        view = memoryview(data)
        while len(view):
            buf = self.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            self.buffer_updated(n)
            view = view[n:]

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the next bytes go: the placed payload's destination, else scratch room.

        The scratch buffer is never resized in place (a transport may still hold
        a view of it): compaction moves bytes within it, growth makes a new one.
        """
        if self._direct is not None:
            return self._direct
        if self._pos == self._end:
            self._pos = self._end = 0
        if len(self._buf) - self._end < SCRATCH:
            n = self._end - self._pos
            if self._pos:
                self._buf[:n] = self._buf[self._pos:self._end]
                self._pos, self._end = 0, n
            if len(self._buf) - n < SCRATCH:
                bigger = bytearray(max(2 * len(self._buf), n + SCRATCH))
                bigger[:n] = self._buf[:n]
                self._buf = bigger
        return memoryview(self._buf)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        direct = self._direct
        if direct is None:
            self._end += nbytes
            return
        if nbytes < len(direct):
            self._direct = direct[nbytes:]
            return
        self._direct = None
        self._ready, self._direct_pdu = self._direct_pdu, None

    # ---- output ------------------------------------------------------------------
    def next_pdu(self) -> Pdu | None:
        """The next complete PDU, or None until more bytes arrive."""
        if self._ready is not None:
            pdu, self._ready = self._ready, None
            self.placed = pdu
            return pdu
        if self._direct is not None:
            return None
        if self._skip:
            n = min(self._skip, self._end - self._pos)
            self._pos += n
            self._skip -= n
            if self._skip:
                return None
        return self._decode()

    def _decode(self) -> Pdu | None:
        buf, pos = self._buf, self._pos
        avail = self._end - pos
        if avail < BHS_SIZE:
            return None
        word = _WORD.unpack_from(buf, pos + 4)[0]
        hlen = BHS_SIZE + ((word >> 24) << 2)
        dsl = word & MAX_DATA_SEGMENT
        hd = DIGEST_SIZE if self.header_digest else 0
        padded = (dsl + 3) & ~3
        dd = DIGEST_SIZE if self.data_digest and dsl else 0
        if dsl > self.max_data_segment:
            raise RemoteProtocolError(
                f"data segment of {dsl} bytes exceeds MaxRecvDataSegmentLength "
                f"{self.max_data_segment}", RejectReason.PROTOCOL_ERROR)
        if avail < hlen + hd:
            return None
        header = bytes(buf[pos:pos + hlen])
        if hd and crc32c(header) != _LE32.unpack_from(buf, pos + hlen)[0]:
            raise RemoteProtocolError("header digest error", RejectReason.PROTOCOL_ERROR)
        start = pos + hlen + hd
        if avail < hlen + hd + padded + dd:
            if not dd and dsl >= MIN_PLACED and buf[pos] & 0x3F == Opcode.DATA_IN:
                self._place(header, start, dsl, padded)
            return None
        self._pos = start + padded + dd
        self.last_header = header
        return self._build(header, start, dsl, padded, dd)

    def _build(self, header: bytes, start: int, dsl: int, padded: int, dd: int) -> Pdu:
        cls = DECODERS.get(header[0] & 0x3F)
        if cls is None:
            raise PduRejected(f"unknown opcode 0x{header[0] & 0x3F:02x}",
                              RejectReason.COMMAND_NOT_SUPPORTED, header[:48])
        fields = cls.STRUCT.unpack_from(header, 0)
        view = memoryview(self._buf)
        if dd and crc32c(view[start:start + padded]) != \
                _LE32.unpack_from(self._buf, start + padded)[0]:
            raise PduRejected("data digest error", RejectReason.DATA_DIGEST_ERROR, header[:48],
                              cls.from_fields(fields, header[BHS_SIZE:], b""))
        self.placed = None  # data: a view of scratch, valid until the next get_buffer()
        return cls.from_fields(fields, header[BHS_SIZE:], view[start:start + dsl])

    def _place(self, header: bytes, start: int, dsl: int, padded: int) -> None:
        """A Data-In whose payload is still arriving: receive the rest into its command."""
        if self.placer is None:
            return
        pdu = DataIn.from_fields(DataIn.STRUCT.unpack_from(header, 0), header[BHS_SIZE:], b"")
        dest = self.placer(pdu, dsl)
        if dest is None or len(dest) != dsl:
            return
        have = self._end - start
        dest[:have] = memoryview(self._buf)[start:self._end]
        pdu.data = dest
        self.last_header = header
        self._pos = self._end
        self._direct, self._direct_pdu = dest[have:], pdu
        self._skip = padded - dsl
