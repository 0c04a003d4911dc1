"""Transmission half of the NBD client core: requests out, replies in.

Theory of operation
-------------------
Every request gets a cookie and a ``_Pending`` record; replies are matched
by cookie and may come in any order (proto.md, "Transmission").  Parsing is
a chain of units (see ``client_reader``)::

    MAGIC(4) --simple magic-->     SIMPLE(12) --READ, error 0--> DATA(length)
             --structured magic--> CHUNK(16) --type table-->    payload unit(s)

A simple reply, or a chunk with NBD_REPLY_FLAG_DONE, finishes the request:
the record is checked for completeness (a successful READ covered its whole
range, a successful BLOCK_STATUS reported every negotiated context) and a
``RequestDone`` event is queued.  Chunk types are dispatched by
``_CHUNK_TABLE``; an unknown type with bit 15 set is an error chunk, any
other unknown type is a protocol violation ("Structured reply types").

Everything a server can get wrong raises ``RemoteProtocolError``: unknown
cookie, structured chunks that were not negotiated, a simple reply to a READ
under structured replies, overlapping or out-of-range content, DF violated,
block status for a context never negotiated, REQ_ONE with several extents.
"""

from __future__ import annotations

import bisect
import struct
from collections import deque
from collections.abc import Callable

from blockyard.errors import LocalProtocolError, RemoteProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client_codec import parse_block_status, parse_error_payload, wire_error
from blockyard.nbd.client_events import (
    BlockStatusChunk,
    Buffer,
    ErrorChunk,
    ExportDetails,
    HoleChunk,
    ReadChunk,
    RequestDone,
)
from blockyard.nbd.client_requests import check_request

Cmd = c.Cmd
F = c.CmdFlag
RT = c.ReplyType
_REQ = wire.REQUEST.pack
_REQUEST_MAGIC = c.REQUEST_MAGIC
_SIMPLE_TAIL = struct.Struct(">IQ")  # error, cookie
_CHUNK_TAIL = struct.Struct(">HHQI")  # flags, type, cookie, length
_MAGIC = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_READ, _WRITE, _BLOCK_STATUS = int(Cmd.READ), int(Cmd.WRITE), int(Cmd.BLOCK_STATUS)
_DONE = int(c.ReplyFlag.DONE)
MAX_CHUNK = 16 << 20  # cap on a non-data chunk payload
# ERROR_OFFSET is "valid as a reply to" these commands only
_ERROR_OFFSET_CMDS = frozenset({Cmd.READ, Cmd.WRITE, Cmd.TRIM, Cmd.CACHE,
                                Cmd.WRITE_ZEROES, Cmd.BLOCK_STATUS})


class _Pending:
    """One request in flight."""

    __slots__ = ("cmd", "flags", "offset", "length", "error", "message", "started",
                 "covered", "ranges", "contexts")

    def __init__(self, cmd: int, flags: int, offset: int, length: int) -> None:
        self.cmd = cmd
        self.flags = flags
        self.offset = offset
        self.length = length
        self.error = 0
        self.message = ""
        self.started = False  # a structured chunk arrived
        self.covered = 0  # READ: bytes described by content chunks
        self.ranges: list[tuple[int, int]] = []  # READ: sorted content ranges
        self.contexts: set[int] = set()  # BLOCK_STATUS: contexts reported


class Transmission:
    """Mixin of ``ClientConnection``: request encoders and the reply parser."""

    export: ExportDetails | None
    _out: list[Buffer]
    _events: deque[object]
    _expect: Callable[..., None]
    _fail: Callable[[str], RemoteProtocolError]

    def _init_transmission(self) -> None:
        self._pending: dict[int, _Pending] = {}
        self._next_cookie = 1
        self._cur_cookie = 0
        self._cur: _Pending | None = None
        self._cur_done = False
        self._cur_type = 0
        self._cur_len = 0
        self._cur_offset = 0

    # ---- requests --------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _can_request(self) -> ExportDetails:  # overridden: checks the state
        raise NotImplementedError

    def request(self, cmd: int, offset: int = 0, length: int = 0, flags: int = 0,
                payload: Buffer | None = None, *, cookie: int | None = None,
                check: bool = True) -> int:
        """Queue one request; returns its cookie.

        ``check=False`` skips the client's own rule checks (tests use it to
        send what a buggy client would); field widths are always enforced.
        """
        export = self._can_request()
        if cmd == Cmd.DISC:
            raise LocalProtocolError("use disconnect() for NBD_CMD_DISC")
        if (payload is not None) != (cmd == _WRITE):
            raise LocalProtocolError("a payload goes with NBD_CMD_WRITE and nothing else")
        if payload is not None and len(payload) != length:
            raise LocalProtocolError("WRITE length disagrees with its payload")
        if check:
            problem = check_request(export, cmd, flags, offset, length)
            if problem:
                raise LocalProtocolError(problem)
        cookie = self._take_cookie(cookie)
        try:
            header = _REQ(_REQUEST_MAGIC, flags, cmd, cookie, offset, length)
        except struct.error as exc:
            raise LocalProtocolError(f"request field out of range: {exc}") from None
        self._pending[cookie] = _Pending(cmd, flags, offset, length)
        self._out.append(header)
        if payload is not None and length:
            self._out.append(payload)
        return cookie

    def _take_cookie(self, cookie: int | None) -> int:
        if cookie is not None:
            if cookie in self._pending or not 0 <= cookie < 1 << 64:
                raise LocalProtocolError(f"cookie {cookie} is in flight or out of range")
            return cookie
        cookie = self._next_cookie
        while cookie in self._pending:
            cookie = (cookie + 1) & 0xFFFFFFFFFFFFFFFF
        self._next_cookie = (cookie + 1) & 0xFFFFFFFFFFFFFFFF
        return cookie

    def read(self, offset: int, length: int, *, df: bool = False, fua: bool = False) -> int:
        return self.request(Cmd.READ, offset, length, (F.DF if df else 0) | (F.FUA if fua else 0))

    def write(self, offset: int, data: Buffer, *, fua: bool = False) -> int:
        return self.request(Cmd.WRITE, offset, len(data), F.FUA if fua else 0, data)

    def flush(self) -> int:
        return self.request(Cmd.FLUSH)

    def trim(self, offset: int, length: int, *, fua: bool = False) -> int:
        return self.request(Cmd.TRIM, offset, length, F.FUA if fua else 0)

    def cache(self, offset: int, length: int) -> int:
        return self.request(Cmd.CACHE, offset, length)

    def write_zeroes(self, offset: int, length: int, *, no_hole: bool = False,
                     fast: bool = False, fua: bool = False) -> int:
        flags = (F.NO_HOLE if no_hole else 0) | (F.FAST_ZERO if fast else 0) | (
            F.FUA if fua else 0)
        return self.request(Cmd.WRITE_ZEROES, offset, length, flags)

    def block_status(self, offset: int, length: int, *, req_one: bool = False) -> int:
        return self.request(Cmd.BLOCK_STATUS, offset, length, F.REQ_ONE if req_one else 0)

    # ---- replies: magic, simple replies ----------------------------------------------------------
    def _expect_reply(self) -> None:
        self._expect(4, self._reply_magic)

    def _reply_magic(self, data: bytes | bytearray) -> None:
        (magic,) = _MAGIC.unpack(data)
        if magic == c.SIMPLE_REPLY_MAGIC:
            self._expect(12, self._simple_reply)
        elif magic == c.STRUCTURED_REPLY_MAGIC:
            self._expect(16, self._chunk_header)
        else:
            raise self._fail(f"bad reply magic {magic:#x}")

    def _lookup(self, cookie: int) -> _Pending:
        p = self._pending.get(cookie)
        if p is None:
            raise self._fail(f"reply for cookie {cookie} that is not in flight")
        return p

    def _simple_reply(self, data: bytes | bytearray) -> None:
        err, cookie = _SIMPLE_TAIL.unpack(data)
        p = self._lookup(cookie)
        assert self.export is not None
        if p.started:
            raise self._fail(f"simple reply to cookie {cookie} after structured chunks")
        if p.cmd == _READ and self.export.structured:  # "MUST NOT use a simple reply"
            raise self._fail("simple reply to READ although structured replies are on")
        if err == 0 and p.cmd == _BLOCK_STATUS:
            raise self._fail("BLOCK_STATUS answered by a simple reply without error")
        if err == 0 and p.cmd == _READ:
            self._cur_cookie, self._cur = cookie, p
            self._expect(p.length, self._simple_read_data, True)
            return
        if err:
            p.error = wire_error(err)
        self._finish(cookie, p)

    def _simple_read_data(self, data: bytes | bytearray) -> None:
        p = self._cur
        assert p is not None
        p.covered = len(data)
        self._events.append(ReadChunk(self._cur_cookie, p.offset, data))
        self._finish(self._cur_cookie, p)

    def _finish(self, cookie: int, p: _Pending) -> None:
        if not p.error:
            if p.cmd == _READ and p.covered != p.length:
                raise self._fail(f"read reply covers {p.covered} of {p.length} bytes")
            if p.cmd == _BLOCK_STATUS and self.export is not None and \
                    p.contexts != set(self.export.meta_contexts):
                raise self._fail("block status reply lacks a negotiated context")
        del self._pending[cookie]
        self._cur = None
        self._events.append(RequestDone(cookie, p.cmd, p.error, p.message))
        self._expect_reply()

    # ---- structured chunks ----------------------------------------------------------------------
    def _chunk_header(self, data: bytes | bytearray) -> None:
        flags, ctype, cookie, length = _CHUNK_TAIL.unpack(data)
        assert self.export is not None
        if not self.export.structured:
            raise self._fail("structured reply chunk although not negotiated")
        p = self._lookup(cookie)
        p.started = True
        self._cur_cookie, self._cur, self._cur_done = cookie, p, bool(flags & _DONE)
        self._cur_type, self._cur_len = ctype, length
        start = _CHUNK_TABLE.get(ctype)
        if start is None:
            if not ctype & 0x8000:  # unknown non-error type: "MUST initiate a hard disconnect"
                raise self._fail(f"unknown structured reply type {ctype}")
            start = Transmission._start_error
        start(self, p, length)

    def _end_chunk(self) -> None:
        p = self._cur
        assert p is not None
        if self._cur_done:
            self._finish(self._cur_cookie, p)
        else:
            self._expect_reply()

    def _require(self, p: _Pending, cmd: int, what: str) -> None:
        if p.cmd != cmd:
            raise self._fail(f"{what} chunk in reply to {Cmd(p.cmd).name}")

    def _start_none(self, p: _Pending, length: int) -> None:
        if length or not self._cur_done:  # "length MUST be 0", "MUST ... DONE"
            raise self._fail("NBD_REPLY_TYPE_NONE with a payload or without DONE")
        self._end_chunk()

    def _start_data(self, p: _Pending, length: int) -> None:
        self._require(p, _READ, "OFFSET_DATA")
        if length < 9 or length - 8 > p.length:  # "length MUST be at least 9"
            raise self._fail(f"OFFSET_DATA chunk of bad length {length}")
        self._expect(8, self._data_offset)

    def _data_offset(self, data: bytes | bytearray) -> None:
        (offset,) = _U64.unpack(data)
        n = self._cur_len - 8
        self._add_content(offset, n)
        self._cur_offset = offset
        self._expect(n, self._data_body, True)

    def _data_body(self, data: bytes | bytearray) -> None:
        self._events.append(ReadChunk(self._cur_cookie, self._cur_offset, data))
        self._end_chunk()

    def _start_hole(self, p: _Pending, length: int) -> None:
        self._require(p, _READ, "OFFSET_HOLE")
        if length != 12:  # "length MUST be exactly 12"
            raise self._fail(f"OFFSET_HOLE chunk of length {length}")
        self._expect(12, self._hole_body)

    def _hole_body(self, data: bytes | bytearray) -> None:
        offset, n = wire.OFFSET_HOLE.unpack(data)
        if n == 0:
            raise self._fail("OFFSET_HOLE of size 0")
        self._add_content(offset, n)
        self._events.append(HoleChunk(self._cur_cookie, offset, n))
        self._end_chunk()

    def _add_content(self, offset: int, n: int) -> None:
        """proto.md NBD_CMD_READ: content within the request, never overlapping, one if DF."""
        p = self._cur
        assert p is not None
        end = offset + n
        if offset < p.offset or end > p.offset + p.length:
            raise self._fail(f"content {offset}+{n} outside the request")
        if p.flags & F.DF and p.ranges:
            raise self._fail("several content chunks despite NBD_CMD_FLAG_DF")
        ranges = p.ranges
        i = bisect.bisect(ranges, (offset, end))
        if (i and ranges[i - 1][1] > offset) or (i < len(ranges) and ranges[i][0] < end):
            raise self._fail(f"content {offset}+{n} overlaps an earlier chunk")
        ranges.insert(i, (offset, end))
        p.covered += n

    def _start_status(self, p: _Pending, length: int) -> None:
        self._require(p, _BLOCK_STATUS, "BLOCK_STATUS")
        if length > MAX_CHUNK:
            raise self._fail(f"block status chunk of {length} bytes")
        self._expect(length, self._status_body)

    def _status_body(self, data: bytes | bytearray) -> None:
        p, export = self._cur, self.export
        assert p is not None and export is not None
        try:
            cid, extents = parse_block_status(data)
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        if cid not in export.meta_contexts or cid in p.contexts:
            raise self._fail(f"block status for context {cid}: not negotiated or repeated")
        p.contexts.add(cid)
        self._check_extents(p, export, extents)
        self._events.append(BlockStatusChunk(self._cur_cookie, cid, extents))
        self._end_chunk()

    def _check_extents(self, p: _Pending, export: ExportDetails,
                       extents: list[tuple[int, int]]) -> None:
        """proto.md NBD_REPLY_TYPE_BLOCK_STATUS: REQ_ONE and length rules."""
        if p.flags & F.REQ_ONE:
            if len(extents) != 1 or extents[0][0] > p.length:
                raise self._fail("REQ_ONE answered by other than one extent within the request")
        elif sum(n for n, _ in extents[:-1]) >= p.length:
            raise self._fail("block status extents beyond the request before the last")
        mb = export.min_block
        if mb > 1 and any(n % mb for n, _ in extents):
            raise self._fail(f"extent length not a multiple of the minimum block size {mb}")

    def _start_error(self, p: _Pending, length: int) -> None:
        if length > MAX_CHUNK:
            raise self._fail(f"error chunk of {length} bytes")
        if self._cur_type == RT.ERROR_OFFSET and p.cmd not in _ERROR_OFFSET_CMDS:
            raise self._fail(f"ERROR_OFFSET chunk in reply to {p.cmd}")
        self._expect(length, self._error_body)

    def _error_body(self, data: bytes | bytearray) -> None:
        p = self._cur
        assert p is not None
        ctype = self._cur_type
        known = ctype in (RT.ERROR, RT.ERROR_OFFSET)
        trailer = 8 if ctype == RT.ERROR_OFFSET else 0
        try:
            err, message, tail = parse_error_payload(data, trailer, exact=known)
        except ValueError as exc:
            raise self._fail(str(exc)) from None
        offset = _U64.unpack(tail)[0] if trailer else None
        if offset is not None and not p.offset <= offset < p.offset + max(p.length, 1):
            raise self._fail(f"error offset {offset} outside the request")
        if not p.error:
            p.error, p.message = wire_error(err), message
        self._events.append(ErrorChunk(self._cur_cookie, wire_error(err), message, offset))
        self._end_chunk()


_CHUNK_TABLE: dict[int, Callable[[Transmission, _Pending, int], None]] = {
    RT.NONE: Transmission._start_none,
    RT.OFFSET_DATA: Transmission._start_data,
    RT.OFFSET_HOLE: Transmission._start_hole,
    RT.BLOCK_STATUS: Transmission._start_status,
    RT.ERROR: Transmission._start_error,
    RT.ERROR_OFFSET: Transmission._start_error,
}

