"""Transmission half of the sans-IO NBD server core: request headers and payloads in.

``ServerTransmission`` is the mixin of ``server.ServerConnection`` that runs in
the TRANSMISSION state (see the theory of operation in ``server``).  Each
request header, and a WRITE's payload, becomes a ``Request`` event after
validation against the negotiated export; a request that fails validation
gets its error reply queued and produces no event.  A WRITE larger than the
export's maximum block size is discarded and answered EINVAL.  Payloads of
64 KiB and more (``DIRECT_PAYLOAD``) are received into a buffer of their own
from ``alloc_payload``, so the transport can receive straight into it;
smaller ones are copied out of the input buffer once.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from blockyard.errors import RemoteProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd import replies, wire
from blockyard.nbd.events import NEED_DATA, Disconnect, Negotiated, Request
from blockyard.nbd.inbuf import DIRECT_PAYLOAD, InputBuffer
from blockyard.nbd.validate import validate_request


class ServerTransmission(InputBuffer):
    """Mixin of ``ServerConnection``: parses and validates requests."""

    negotiated: Negotiated
    alloc_payload: Callable[[int], bytearray]
    _pending: tuple[int, int, int, int, int] | None
    _skip: int
    _after_skip: bytes | None
    _out: list[bytes]
    _do_skip: Callable[[], bool]
    _fail: Callable[[str], RemoteProtocolError]
    _disconnect: Callable[[str], Disconnect]

    def _next_request(self) -> object:
        while True:
            if self._skip and not self._do_skip():
                return NEED_DATA
            if self._pending is not None:
                event = self._finish_payload()
                if event is None:
                    return NEED_DATA
                if event is False:
                    continue
            else:
                event = self._parse_request()
                if event is NEED_DATA:
                    return NEED_DATA
            if event is not None:
                return event

    def _parse_request(self) -> object | None:
        start = self._start
        if self._end - start < 28:
            return NEED_DATA
        magic, flags, cmd, cookie, offset, length = wire.REQUEST.unpack_from(self._buf, start)
        if magic != c.REQUEST_MAGIC:
            raise self._fail(f"bad request magic {magic:#x}")
        if cmd == 1:  # NBD_CMD_WRITE carries a payload
            return self._parse_write(flags, cookie, offset, length)
        self._start = start + 28
        return self._validated(cmd, flags, cookie, offset, length, None)

    def _parse_write(self, flags: int, cookie: int, offset: int, length: int) -> object | None:
        spec = self.negotiated.export
        assert spec is not None
        if length > spec.max_block:  # too big to buffer: discard it, answer EINVAL
            self._start += 28
            self._skip = length
            self._after_skip = replies.error(cookie, errno.EINVAL, self.negotiated.structured,
                                             "write larger than the maximum block size")
            return None
        avail = self._end - self._start - 28
        if avail >= length:
            begin = self._start + 28
            payload = bytes(self._buf[begin:begin + length])
            self._start = begin + length
            return self._validated(1, flags, cookie, offset, length, payload)
        if length < DIRECT_PAYLOAD:
            if self._start + 28 + length > len(self._buf):
                self._compact()
            return NEED_DATA
        self._start += 28
        self._payload = self.alloc_payload(length)
        self._payload[:avail] = self._buf[self._start:self._start + avail]
        self._pfill = avail
        self._start += avail
        self._pending = (flags, cookie, offset, length, 1)
        return None

    def _finish_payload(self) -> object | None:
        assert self._payload is not None and self._pending is not None
        if self._pfill < len(self._payload):
            return None
        flags, cookie, offset, length, cmd = self._pending
        payload, self._payload, self._pending = self._payload, None, None
        event = self._validated(cmd, flags, cookie, offset, length, payload)
        return event if event is not None else False  # False: consumed, keep parsing

    def _validated(self, cmd: int, flags: int, cookie: int, offset: int, length: int,
                   payload: bytes | bytearray | None) -> object | None:
        spec = self.negotiated.export
        assert spec is not None
        if cmd == 2:  # NBD_CMD_DISC
            return self._disconnect("client sent NBD_CMD_DISC")
        err = validate_request(self.negotiated, spec, cmd, flags, offset, length)
        if err:
            self._out.append(replies.error(cookie, err[0], self.negotiated.structured, err[1]))
            return None
        return Request(cmd, flags, cookie, offset, length, payload)

    def has_pending_input(self) -> bool:
        """True while a request is half received (for graceful shutdown decisions)."""
        return self._payload is not None or self._end > self._start
