"""One SCSI task on the target: gathering its Data-Out (RFC 7143 §11.7, §11.8, §13.10-13.17).

Theory of operation.  A write task owns a buffer of Expected Data Transfer
Length bytes and fills it in order (we negotiate DataPDUInOrder and
DataSequenceInOrder to Yes)::

    state        event                                  next
    UNSOLICITED  immediate data in the command          (stays)
                 Data-Out, TTT=0xffffffff, F=0          (stays)
                 Data-Out, TTT=0xffffffff, F=1          SOLICITING or READY
    SOLICITING   R2Ts sent (at most MaxOutstandingR2T open, each at most
                 MaxBurstLength), Data-Out with their TTT
                 last Data-Out of the last R2T          READY
    READY        handed to the SCSI layer

A command with F=1 has no unsolicited Data-Out, so it starts in SOLICITING
(or READY).  Errors in the command itself (data without the W bit, immediate
data with ImmediateData=No or beyond FirstBurstLength, unsolicited Data-Out
announced with InitialR2T=Yes) are protocol errors that end the connection.
Errors inside a data sequence -- a DataSN out of order (§11.7.5), a buffer
offset that is not the next byte (§11.7.6), more data than the sequence
allows, an F bit in the wrong place -- raise ``DataOutError``: the task
fails and, as §7.8 (b) prescribes at ErrorRecoveryLevel 0 for such implied
digest errors, we keep reading its Data-Out until every open sequence has
ended with the F bit and then answer CHECK CONDITION (ABORTED COMMAND,
"protocol service CRC error" or "data offset error").  libiscsi's
iSCSIdatasn expects exactly that: the write fails, the connection lives.
"""

from __future__ import annotations

from collections.abc import Callable

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.constants import RESERVED_TAG, RejectReason
from blockyard.iscsi.keys import Params
from blockyard.iscsi.pdu import Buffer

UNSOLICITED, SOLICITING, READY, EXECUTING, ABORTED, FAILED = range(6)


def _sense(asc: int, ascq: int) -> bytes:
    """Fixed-format sense, ABORTED COMMAND (0Bh), with the given ASC/ASCQ."""
    return bytes([0x70, 0, 0x0B, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])


CRC_ERROR = _sense(0x47, 0x05)  # PROTOCOL SERVICE CRC ERROR (§11.4.7.2)
OFFSET_ERROR = _sense(0x4B, 0x05)  # DATA OFFSET ERROR
TOO_MUCH_DATA = _sense(0x4B, 0x02)  # TOO MUCH WRITE DATA
# ILLEGAL REQUEST, INVALID FIELD IN CDB: a write larger than we are willing to buffer
TOO_LARGE = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0])


# Shared empty placeholders (never mutated: ``next_r2ts`` and ``fail`` replace them)
_NO_R2TS: dict[int, R2TState] = {}
_NO_SEQS: set[int] = set()


class DataOutError(Exception):
    """A Data-Out sequence went wrong: the task fails with ``sense``."""

    def __init__(self, message: str, sense: bytes) -> None:
        super().__init__(message)
        self.sense = sense


def _violation(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, RejectReason.PROTOCOL_ERROR)


class R2TState:
    __slots__ = ("ttt", "r2tsn", "offset", "length", "received", "next_datasn")

    def __init__(self, ttt: int, r2tsn: int, offset: int, length: int) -> None:
        self.ttt, self.r2tsn, self.offset, self.length = ttt, r2tsn, offset, length
        self.received = 0
        self.next_datasn = 0


class Task:
    """A SCSI command between its arrival and its response."""

    __slots__ = ("itt", "lun", "lun_field", "cmdsn", "immediate", "cdb", "edtl", "read", "write",
                 "attr", "read_len", "state", "buf", "data_out", "received", "unsol_limit",
                 "direct", "unsol_datasn", "next_offset", "r2tsn", "r2ts", "responses",
                 "aborted_by", "sense", "fail_status", "open_seqs")

    def __init__(self, itt: int, lun: int, lun_field: int, cmdsn: int, immediate: bool,
                 cdb: bytes, edtl: int, read: bool, write: bool, attr: int,
                 read_len: int | None = None) -> None:
        self.itt, self.lun, self.lun_field, self.cmdsn = itt, lun, lun_field, cmdsn
        self.immediate, self.cdb, self.edtl = immediate, cdb, edtl
        self.read, self.write, self.attr = read, write, attr
        # bidirectional commands carry the read length in an AHS (§11.2.2.4)
        self.read_len = read_len if read_len is not None and write else edtl
        self.state = READY
        self.buf: bytearray | None = None
        self.data_out: Buffer | None = None
        self.direct: memoryview | None = None  # a Data-Out payload received straight into buf
        self.received = 0
        self.unsol_limit = 0
        self.unsol_datasn = 0
        self.next_offset = 0
        self.r2tsn = 0
        self.r2ts: dict[int, R2TState] = _NO_R2TS  # a dict of its own from the first R2T
        self.responses = 0  # R2T + Data-In PDUs sent, for ExpDataSN (§11.4.8)
        self.aborted_by: int | None = None  # ITT of the TMF waiting for this task
        self.sense = b""  # set when a Data-Out sequence failed (FAILED)
        self.fail_status = 0x02  # CHECK CONDITION, or TASK SET FULL (28h, no sense)
        self.open_seqs: set[int] = _NO_SEQS  # sequences still to end (set by ``fail``)

    # ---- the data-out side ----------------------------------------------------------
    def start_write(self, immediate: Buffer, final: bool, params: Params,
                    placed: bytearray | None = None,
                    alloc: Callable[[int], bytearray] = bytearray) -> None:
        """Take the command's immediate data; decide whether unsolicited Data-Out follows.
        ``placed``: a buffer of EDTL bytes the immediate data was received into (at 0);
        ``alloc(n)``: a buffer of n bytes for the rest (its old contents are overwritten)."""
        n = len(immediate)
        expected = self.edtl if self.write else 0
        if n and not self.write:
            raise _violation("data segment on a command without the W bit")
        if n and not params.immediate_data:
            raise _violation("immediate data with ImmediateData=No")  # §13.11
        self.unsol_limit = min(params.first_burst_length, expected)
        if n > self.unsol_limit:
            raise _violation(f"{n} bytes of immediate data, limit {self.unsol_limit}")
        if not final and params.initial_r2t:
            raise _violation("unsolicited Data-Out announced with InitialR2T=Yes")  # §13.10
        if n == expected:
            self.data_out = (placed if placed is not None else bytes(immediate)) if n else b""
            self.received = n
            self.state = READY if final or not n else UNSOLICITED
            if not final and n:
                raise _violation("F=0 but the immediate data is already complete")
            return
        if placed is not None:
            self.buf = placed
        else:
            self.buf = alloc(expected)
            self.buf[:n] = immediate
        self.received = self.next_offset = n
        self.state = SOLICITING if final else UNSOLICITED

    def unsolicited(self, datasn: int, offset: int, data: Buffer, final: bool) -> None:
        """A Data-Out with TTT 0xffffffff (§11.7.4)."""
        if self.state != UNSOLICITED:
            raise _violation("unsolicited Data-Out outside the unsolicited sequence")
        if datasn != self.unsol_datasn:
            raise DataOutError(f"DataSN {datasn}, expected {self.unsol_datasn}",  # §11.7.5
                               CRC_ERROR)
        end = self._check_offset(offset, len(data), self.unsol_limit)
        self._store(offset, data, end)
        self.unsol_datasn += 1
        if end == self.unsol_limit and not final:
            raise DataOutError("unsolicited data reached its limit without the F bit",
                               TOO_MUCH_DATA)
        if final:
            self.next_offset = end
            self.state = SOLICITING if end < self.edtl else READY

    def solicited(self, r2t: R2TState, datasn: int, offset: int, data: Buffer,
                  final: bool) -> bool:
        """A Data-Out answering ``r2t``; True when that R2T's sequence is complete."""
        if datasn != r2t.next_datasn:
            raise DataOutError(f"DataSN {datasn}, expected {r2t.next_datasn}",  # §11.7.5
                               CRC_ERROR)
        end = self._check_offset(offset, len(data), r2t.offset + r2t.length)
        self._store(offset, data, end)
        r2t.received += len(data)
        r2t.next_datasn += 1
        done = r2t.received == r2t.length
        if final != done:  # §11.7.1
            raise DataOutError("F bit does not match the end of the R2T sequence", CRC_ERROR)
        return done

    def _check_offset(self, offset: int, n: int, limit: int) -> int:
        if offset != self.received:  # §11.7.6, with DataPDUInOrder=Yes
            raise DataOutError(f"buffer offset {offset}, expected {self.received}", OFFSET_ERROR)
        end = offset + n
        if end > limit:
            raise DataOutError(f"Data-Out up to byte {end} beyond the allowed {limit}",
                               TOO_MUCH_DATA)
        return end

    def _store(self, offset: int, data: Buffer, end: int) -> None:
        assert self.buf is not None
        if data is not self.direct:  # else the socket already wrote it there
            self.buf[offset:end] = data
        self.direct = None
        self.received = end

    def next_r2ts(self, params: Params, new_ttt: object) -> list[R2TState]:
        """Open as many R2Ts as MaxOutstandingR2T allows (§13.17), each <= MaxBurstLength."""
        out = []
        if self.r2ts is _NO_R2TS:
            self.r2ts = {}
        while len(self.r2ts) < params.max_outstanding_r2t and self.next_offset < self.edtl:
            length = min(params.max_burst_length, self.edtl - self.next_offset)
            r2t = R2TState(new_ttt(), self.r2tsn, self.next_offset, length)  # type: ignore[operator]
            self.r2tsn += 1
            self.next_offset += length
            self.r2ts[r2t.ttt] = r2t
            out.append(r2t)
        return out

    def finish_r2t(self, r2t: R2TState) -> None:
        del self.r2ts[r2t.ttt]
        if not self.r2ts and self.received == self.edtl:
            self.state = READY

    # ---- failure ----------------------------------------------------------------------
    def fail(self, sense: bytes, status: int = 0x02) -> None:
        """Stop taking data; remember which sequences must still end (§7.8 b)."""
        self.fail_status = status
        self.open_seqs = set(self.r2ts)
        if self.state == UNSOLICITED:
            self.open_seqs.add(RESERVED_TAG)
        self.state = FAILED
        self.sense = sense
        self.buf = None
        self.r2ts = {}

    def sequence_pdu(self, ttt: int, final: bool) -> bool:
        """A Data-Out of a failed task; True once every open sequence has ended."""
        if final:
            self.open_seqs.discard(ttt)
        return not self.open_seqs

    def payload(self) -> Buffer | None:
        if not self.write:
            return None
        if self.data_out is not None:
            return self.data_out
        return self.buf if self.buf is not None else b""


def is_unsolicited(ttt: int) -> bool:
    return ttt == RESERVED_TAG
