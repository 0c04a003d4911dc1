"""One SCSI command on the initiator side: its PDUs out, its Data-In and status in.

Theory of operation.  A ``Command`` belongs to the session, not to a
connection: when a connection dies before the command's status arrived the
session hands it to the next connection, which numbers it afresh (new ITT,
new CmdSN, ``reset()``).  On each connection it goes through::

    QUEUED --window open--> SENT --Data-In*--> (S bit) DONE
                             |  --R2T--> Data-Out sequence (answered here)
                             |  --SCSI Response--> DONE
                             '--deadline--> ABORTING --TMF response--> DONE (error)

Writes (§11.3, §11.7): immediate data up to min(FirstBurstLength, the
target's MaxRecvDataSegmentLength) rides in the command PDU when
ImmediateData=Yes; with InitialR2T=No unsolicited Data-Out follows, up to
FirstBurstLength in all; R2Ts pull the rest, each answered with one
sequence of Data-Out PDUs (DataSN from 0, the R2T's TTT, F on the last).
Payload slices are views of the caller's buffer: never copied, never joined.

Reads (§11.7): Data-In lands in ``buffer`` at its Buffer Offset (a view of
the caller's buffer when one was given); DataSN must run 0, 1, 2... (at
ErrorRecoveryLevel 0 a gap is a protocol error, §7.8); the S bit carries the
status and the residual (phase collapse, §11.7.4), else a SCSI Response
does, with sense data after a 2-byte length (§11.4.7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.constants import (
    CMD_ATTR_MASK,
    CMD_FINAL,
    CMD_READ,
    CMD_WRITE,
    RESERVED_TAG,
    RSP_OVERFLOW,
    RSP_UNDERFLOW,
    Opcode,
    RejectReason,
)
from blockyard.iscsi.keys import Params
from blockyard.iscsi.pdu import SCSI_CMD, Buffer, encode_lun
from blockyard.iscsi.pdu_initiator import DataOut, ScsiCommandPdu
from blockyard.iscsi.pdu_target import R2T, DataIn, ScsiResponse

Emit = list[tuple[bytes, Buffer]]  # (header, data) pairs to frame and send


@dataclass(slots=True, eq=False)
class Command:
    cdb: bytes
    lun: int = 0
    data_out: Buffer | None = None
    read_len: int = 0
    into: memoryview | None = None  # where read data goes (else a new bytearray)
    timeout: float | None = None  # seconds; None: the session's command_timeout
    attr: int = 1  # SIMPLE
    token: Any = None  # the transport's handle (a future)
    seq: int = 0  # submission order in the session (reissue keeps it)
    # outcome
    status: int = -1
    sense: bytes = b""
    residual: int = 0
    flags: int = 0  # O / U residual bits of the response
    error: str = ""  # no SCSI outcome: timed out, rejected, session lost
    done: bool = False
    # per attempt (``reset`` clears these)
    itt: int = RESERVED_TAG
    cmdsn: int = 0
    attempts: int = 0
    deadline: float = 0.0
    aborting: int = RESERVED_TAG  # ITT of our ABORT TASK, while one is pending
    next_datasn: int = 0
    next_r2tsn: int = 0
    received: int = 0
    buffer: memoryview | bytearray | None = field(default=None, repr=False)

    @property
    def write(self) -> bool:
        return self.data_out is not None

    @property
    def data(self) -> memoryview:
        """The bytes read: the expected length less an underflow residual."""
        n = self.read_len
        if self.flags & RSP_UNDERFLOW:
            n = max(0, n - self.residual)
        if self.buffer is None:
            return memoryview(b"")
        return memoryview(self.buffer)[:n]

    def reset(self) -> None:
        self.itt, self.aborting = RESERVED_TAG, RESERVED_TAG
        self.next_datasn = self.next_r2tsn = self.received = 0
        self.status, self.sense, self.residual, self.flags = -1, b"", 0, 0
        if self.read_len and self.buffer is None:
            self.buffer = self.into if self.into is not None else bytearray(self.read_len)

    def fail(self, error: str) -> None:
        self.error = error
        self.done = True


def command_pdus(cmd: Command, exp_statsn: int, params: Params) -> Emit:
    """The SCSI Command PDU with its immediate data, and any unsolicited Data-Out."""
    out = cmd.data_out
    if out is None:
        return [(_command_header(cmd, cmd.read_len > 0, False, True, 0, exp_statsn), b"")]
    total = len(out)
    view = out if type(out) is memoryview else memoryview(out)
    first = min(params.first_burst_length, total)
    seg = params.peer_max_recv_data_segment
    imm = min(first, seg) if params.immediate_data else 0
    unsolicited = 0 if params.initial_r2t else first - imm
    emit: Emit = [(_command_header(cmd, False, True, not unsolicited, imm, exp_statsn),
                   view[:imm])]
    if unsolicited:
        emit += data_out_sequence(cmd, view, imm, first - imm, RESERVED_TAG, exp_statsn, seg)
    return emit


def _command_header(cmd: Command, read: bool, write: bool, final: bool, dsl: int,
                    exp_statsn: int) -> bytes:
    """The BHS of ``cmd`` (§11.3): packed at once for CDBs of up to 16 bytes (no AHS)."""
    cdb = cmd.cdb
    if len(cdb) > 16:
        return ScsiCommandPdu(final=final, read=read, write=write, attr=cmd.attr,
                              lun=encode_lun(cmd.lun), itt=cmd.itt, edtl=cmd.read_len or
                              (len(cmd.data_out) if cmd.data_out is not None else 0),
                              cmdsn=cmd.cmdsn, exp_statsn=exp_statsn, cdb=cdb,
                              data=b"\0" * dsl).encode_header()
    flags = (cmd.attr & CMD_ATTR_MASK) | (CMD_FINAL if final else 0) | \
        (CMD_READ if read else 0) | (CMD_WRITE if write else 0)
    edtl = len(cmd.data_out) if write and cmd.data_out is not None else cmd.read_len
    return SCSI_CMD.pack(Opcode.SCSI_COMMAND, flags, 0, 0, dsl, encode_lun(cmd.lun), cmd.itt,
                         edtl, cmd.cmdsn, exp_statsn, cdb)


def data_out_sequence(cmd: Command, view: memoryview, offset: int, length: int, ttt: int,
                      exp_statsn: int, seg: int) -> Emit:
    """One Data-Out sequence (§11.7): DataSN from 0, at most ``seg`` bytes each, F last."""
    emit: Emit = []
    lun = encode_lun(cmd.lun)
    end = offset + length
    datasn = 0
    while offset < end:
        n = min(seg, end - offset)
        chunk = view[offset:offset + n]
        pdu = DataOut(offset + n == end, lun, cmd.itt, ttt, exp_statsn, datasn, offset, chunk)
        emit.append((pdu.encode_header(), chunk))
        offset += n
        datasn += 1
    return emit


def answer_r2t(cmd: Command, r2t: R2T, exp_statsn: int, seg: int) -> Emit:
    """The Data-Out sequence an R2T asks for (§11.8), after checking it makes sense."""
    out = cmd.data_out
    if out is None:
        raise RemoteProtocolError(f"R2T for read command 0x{cmd.itt:08x}",
                                  RejectReason.PROTOCOL_ERROR)
    if r2t.r2tsn != cmd.next_r2tsn or r2t.length == 0 or r2t.offset + r2t.length > len(out):
        raise RemoteProtocolError(
            f"bad R2T (R2TSN {r2t.r2tsn}, offset {r2t.offset}, length {r2t.length}) for a "
            f"{len(out)}-byte write", RejectReason.PROTOCOL_ERROR)
    cmd.next_r2tsn += 1
    view = out if type(out) is memoryview else memoryview(out)
    return data_out_sequence(cmd, view, r2t.offset, r2t.length, r2t.ttt, exp_statsn, seg)


def take_data_in(cmd: Command, pdu: DataIn, placed: bool = False) -> bool:
    """Store one Data-In (unless the reader ``placed`` it already); True on the S bit."""
    n = len(pdu.data)
    if pdu.datasn != cmd.next_datasn:  # §7.8: ERL 0 cannot recover a gap
        raise RemoteProtocolError(f"Data-In DataSN {pdu.datasn}, expected {cmd.next_datasn}",
                                  RejectReason.PROTOCOL_ERROR)
    cmd.next_datasn += 1
    if n:
        buf = cmd.buffer
        if buf is None or pdu.offset + n > cmd.read_len:
            raise RemoteProtocolError(
                f"Data-In of {n} bytes at offset {pdu.offset} past the expected "
                f"{cmd.read_len}", RejectReason.PROTOCOL_ERROR)
        if not placed:
            buf[pdu.offset:pdu.offset + n] = pdu.data
        cmd.received += n
    if pdu.status_present:
        cmd.status, cmd.flags, cmd.residual = pdu.status, pdu.residual_flags, pdu.residual
        cmd.done = True
        return True
    return False


def take_response(cmd: Command, rsp: ScsiResponse) -> None:
    """The SCSI Response (§11.4): status, residual, sense after its 2-byte length."""
    if rsp.response != 0:  # §11.4.3: target failure, no SCSI status
        cmd.fail(f"target failure (iSCSI response 0x{rsp.response:02x})")
        return
    cmd.status = rsp.status
    cmd.flags = rsp.flags & (RSP_OVERFLOW | RSP_UNDERFLOW)
    cmd.residual = rsp.residual
    cmd.sense = rsp.sense
    cmd.done = True
