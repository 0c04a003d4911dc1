"""The server core's input buffer: one reusable receive buffer, plus a buffer of
its own for each large WRITE payload so the socket can receive straight into it.

``get_buffer`` / ``buffer_updated`` are the zero-copy path (the transport
receives into the returned view); ``receive_data`` copies bytes in through the
same two calls.  The core consumes from ``_buf[_start:_end]``; a payload in
``_payload`` is complete when ``_pfill == len(_payload)``.
"""

from __future__ import annotations

from typing import Protocol

RBUF_SIZE = 256 << 10
DIRECT_PAYLOAD = 64 << 10  # payloads at least this big get a buffer of their own


class InputBuffer:
    def __init__(self) -> None:
        self._buf = bytearray(RBUF_SIZE)
        self._start = 0
        self._end = 0
        self._payload: bytearray | None = None  # WRITE payload being received directly
        self._pfill = 0

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next received bytes should go (BufferedProtocol.get_buffer)."""
        if self._payload is not None and self._pfill < len(self._payload):
            return memoryview(self._payload)[self._pfill:]
        buf = self._buf
        if len(buf) - self._end < DIRECT_PAYLOAD:
            self._compact()
            if len(buf) - self._end < 4096:
                buf.extend(bytes(len(buf)))  # only when the application stopped consuming
        return memoryview(buf)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._payload is not None and self._pfill < len(self._payload):
            self._pfill += nbytes
        else:
            self._end += nbytes

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copying input path (tests, TLS): same effect as get_buffer/buffer_updated."""
        copy_in(self, data)

    def _compact(self) -> None:
        n = self._end - self._start
        if self._start:
            self._buf[0:n] = self._buf[self._start:self._end]
            self._start, self._end = 0, n

    def _take(self, n: int) -> bytes | None:
        if self._end - self._start < n:
            return None
        data = bytes(self._buf[self._start:self._start + n])
        self._start += n
        return data


class BufferedReader(Protocol):
    def get_buffer(self, sizehint: int) -> memoryview: ...

    def buffer_updated(self, nbytes: int) -> None: ...


def copy_in(reader: BufferedReader, data: bytes | bytearray | memoryview) -> None:
    """Feed ``data`` to a reader with the zero-copy interface (``get_buffer`` /
    ``buffer_updated``, as asyncio's BufferedProtocol) by copying it in."""
    mv = memoryview(data)
    while mv:
        dst = reader.get_buffer(len(mv))
        n = min(len(dst), len(mv))
        dst[:n] = mv[:n]
        dst.release()
        reader.buffer_updated(n)
        mv = mv[n:]
