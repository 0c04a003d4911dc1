"""The SCSI data path of the target: commands, Data-Out, R2T, Data-In, status.

Theory of operation (the FULL_FEATURE rows of ``target._DISPATCH`` for SCSI
Command and Data-Out, plus ``complete_command``'s half).  A SCSI Command
inside the CmdSN window becomes a ``tasks.Task``; its immediate data is
taken at once and R2Ts go out for what is still missing (at most
MaxOutstandingR2T, each at most MaxBurstLength, §11.8).  Data-Out PDUs fill
the task (``tasks.py`` checks DataSN, offsets, F bits); a broken sequence
fails the task with CHECK CONDITION once its open sequences have ended
(§7.8 b).  A complete task is delivered (``CommandReady``) in CmdSN order,
an immediate one at once.  When the SCSI layer answers, the read data goes
out as Data-In PDUs of at most the initiator's MaxRecvDataSegmentLength, in
sequences of MaxBurstLength ending with the F bit; with no sense data the
status rides on the last Data-In (phase collapse, §11.7.4), otherwise a SCSI
Response follows, carrying the sense data (§11.4.7).  Residuals (§11.4.5):
the data produced (reads) or needed by the CDB (writes, ``data_out_used``)
against the Expected Data Transfer Length -- more is an overflow (O), less
an underflow (U); a bidirectional command reports its read side in o/u.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.constants import (
    CMD_WRITE,
    DATA_IN_STATUS,
    FINAL_BIT,
    RESERVED_TAG,
    RSP_OVERFLOW,
    RSP_UNDERFLOW,
    RejectReason,
)
from blockyard.iscsi.events import CommandReady
from blockyard.iscsi.pdu import Pdu
from blockyard.iscsi.pdu_initiator import DataOut, ScsiCommandPdu
from blockyard.iscsi.pdu_target import pack_data_in, pack_r2t, pack_scsi_response
from blockyard.iscsi.tasks import (
    ABORTED,
    CRC_ERROR,
    EXECUTING,
    FAILED,
    READY,
    SOLICITING,
    TOO_LARGE,
    UNSOLICITED,
    DataOutError,
    Task,
)
from blockyard.scsi.task import FileSpan, ScsiCommand, ScsiResult, TaskAttr

if TYPE_CHECKING:
    from blockyard.iscsi.target import Payload, TargetConnection

BULKY = 256 << 10  # answer_now data this large is worth sending from a thread (a hint)
_COLLAPSE_OK = frozenset({0x00, 0x04})  # GOOD, CONDITION MET: no exception (§11.7.4)
# §11.3.1 ATTR values 0-4 are SAM task attributes; 5-7 are reserved, taken as SIMPLE
_ATTRS = tuple(TaskAttr(a) if a <= 4 else TaskAttr.SIMPLE for a in range(8))


def _residual(expected: int, actual: int) -> tuple[int, int]:
    if actual > expected:
        return RSP_OVERFLOW, actual - expected
    if actual < expected:
        return RSP_UNDERFLOW, expected - actual
    return 0, 0


def place(conn: TargetConnection, cls: type[Pdu], fields: tuple[Any, ...],
          length: int) -> memoryview | None:
    """Where the data of a large SCSI Command or Data-Out PDU whose header just arrived
    should be received (``PduReader.sink``): the task's buffer at the PDU's offset, if
    the PDU looks right; anything odd returns None and takes the normal path."""
    if cls is DataOut:
        itt, ttt, offset = fields[6], fields[7], fields[12]
        task = conn.tasks.get(itt)
        if task is None or task.buf is None or offset != task.received:
            return None
        end = offset + length
        if ttt == RESERVED_TAG:
            if task.state != UNSOLICITED or end > task.unsol_limit:
                return None
        else:
            r2t = task.r2ts.get(ttt)
            if task.state != SOLICITING or r2t is None or end > r2t.offset + r2t.length:
                return None
        task.direct = memoryview(task.buf)[offset:end]
        return task.direct
    if cls is ScsiCommandPdu and fields[1] & CMD_WRITE:
        itt, edtl = fields[6], fields[7]
        if not length <= edtl <= conn.portal.max_write or itt in conn.tasks:
            return None
        buf = conn.alloc(edtl)
        view = memoryview(buf)[:length]
        conn.placed = (itt, buf, view)
        return view
    return None


def on_scsi_command(conn: TargetConnection, pdu: ScsiCommandPdu) -> None:
    placed, conn.placed = conn.placed, None
    w = conn.window
    immediate, cmdsn, itt = pdu.immediate, pdu.cmdsn, pdu.itt
    if not immediate and cmdsn != w.exp_cmdsn and not w.accepts(cmdsn):
        return  # §4.2.2.1: outside the window or a duplicate, silently ignored
    if conn.discovery:  # the Reject path in next_event also consumes its CmdSN
        raise RemoteProtocolError("SCSI command in a discovery session",
                                  RejectReason.PROTOCOL_ERROR, fatal=False)
    tasks = conn.tasks
    if itt in tasks or itt == RESERVED_TAG:
        raise RemoteProtocolError("ITT in use", RejectReason.TASK_IN_PROGRESS, fatal=False)
    if conn.answer_now is not None and not immediate and cmdsn == w.exp_cmdsn \
            and not w.waiting and not conn.order and pdu.final and _answered_now(conn, pdu):
        return
    if immediate and len(tasks) >= 2 * conn.portal.cmd_window:
        raise RemoteProtocolError("too many immediate commands",
                                  RejectReason.IMMEDIATE_COMMAND_REJECT, fatal=False)
    write, edtl, lun = pdu.write, pdu.edtl, pdu.lun
    task = Task(itt, (lun >> 48) & 0x3FFF, lun, cmdsn, immediate, pdu.cdb, edtl,  # decode_lun
                pdu.read, write, pdu.attr, pdu.bidi_read_length)
    ready = None if immediate else w.arrive(cmdsn, task)
    tasks[itt] = task
    if write:
        conn.write_bytes += edtl
        portal = conn.portal
        if edtl > portal.max_write or conn.write_bytes > portal.max_write_buffer:
            too_large = edtl > portal.max_write
            _refuse(conn, task, pdu, TOO_LARGE if too_large else b"",
                    0x02 if too_large else 0x28)
            if ready:
                conn.in_order(ready)  # the refused task is skipped; others released with it run
            return
    if write or pdu.data:
        data = pdu.data
        buf = placed[1] if placed is not None and data is placed[2] else None
        task.start_write(data, pdu.final, conn.params, buf, conn.alloc)
        if task.state == SOLICITING:
            send_r2ts(conn, task)
    if immediate:
        if task.state == READY:
            deliver(conn, task)
    elif ready:
        conn.in_order(ready)


def _answered_now(conn: TargetConnection, pdu: ScsiCommandPdu) -> bool:
    """A command next in CmdSN order with all its data at hand that the SCSI layer answers
    at once (``TargetConnection.answer_now``: a page-cache read or small write): answered
    here, exactly as the task path would (deliver, complete_command) but without a Task
    held in between.  False, with nothing done, when the task path must take it."""
    read, write, edtl, data = pdu.read, pdu.write, pdu.edtl, pdu.data
    if write:  # all of it immediate, within the limits start_write and _refuse check
        p, portal = conn.params, conn.portal
        if read or len(data) != edtl or not edtl or not p.immediate_data \
                or edtl > p.first_burst_length or edtl > portal.max_write \
                or conn.write_bytes + edtl > portal.max_write_buffer:
            return False
    elif not read or data:
        return False
    lun, itt = pdu.lun, pdu.itt
    cmd = ScsiCommand(pdu.cdb, (lun >> 48) & 0x3FFF, conn.nexus, data if write else None,
                      edtl if read else 0, _ATTRS[pdu.attr], itt,
                      read and 0 < conn.by_reference_min <= edtl and not conn.dd)
    assert conn.answer_now is not None
    try:
        result = conn.answer_now(cmd)
    except Exception:  # nothing was started (the I/O itself never raises): the task path
        return False
    if result is None:
        return False
    w = conn.window
    exp = w.exp_cmdsn = (pdu.cmdsn + 1) & 0xFFFFFFFF  # what arrive() does with nothing early
    status, sense, out = result.status, result.sense, result.data
    n = len(out)
    if n >= BULKY or type(out) is FileSpan:
        conn.bulky = True
    if not status and not sense:
        p = conn.params
        if read:
            if n == edtl and 0 < n <= p.peer_max_recv_data_segment and n <= p.max_burst_length:
                statsn = conn.statsn  # next_statsn() and max_cmdsn, inlined
                conn.statsn = (statsn + 1) & 0xFFFFFFFF
                conn.emit(pack_data_in(FINAL_BIT | DATA_IN_STATUS, 0, n, 0, itt, RESERVED_TAG,
                                       statsn, exp, (exp + w.depth - 1) & 0xFFFFFFFF, 0, 0, 0),
                          out)
                return True
        elif result.data_out_used == edtl and not n:
            statsn = conn.statsn
            conn.statsn = (statsn + 1) & 0xFFFFFFFF
            conn.emit(pack_scsi_response(0, 0, 0, 0, itt, statsn, exp,
                                         (exp + w.depth - 1) & 0xFFFFFFFF, 0, 0, 0))
            return True
    task = Task(itt, cmd.lun, lun, pdu.cmdsn, False, pdu.cdb, edtl, read, write, pdu.attr)
    task.state = EXECUTING
    send_result(conn, task, result)  # residuals, sense, several Data-In: the general sender
    return True


def _refuse(conn: TargetConnection, task: Task, pdu: ScsiCommandPdu, sense: bytes,
            status: int) -> None:
    """A write we will not buffer (too large, or too much held already: TASK SET FULL);
    answered once its unsolicited data has ended."""
    task.state = UNSOLICITED if not pdu.final else READY
    task.fail(sense, status)
    if not task.open_seqs:
        _finish_failed(conn, task)


def deliver(conn: TargetConnection, task: Task) -> None:
    task.state = EXECUTING
    cmd = ScsiCommand(task.cdb, task.lun, conn.nexus, task.payload(),
                      task.read_len if task.read else 0, _ATTRS[task.attr], task.itt)
    conn.events.append(CommandReady(task.itt, cmd))


def on_data_out(conn: TargetConnection, pdu: DataOut) -> None:
    task = conn.tasks.get(pdu.itt)
    if task is None or task.state == ABORTED:
        if pdu.itt in conn.aborted or task is not None:
            return  # data of an aborted task: dropped (§11.5.1)
        raise RemoteProtocolError(f"Data-Out for unknown ITT 0x{pdu.itt:08x}",
                                  RejectReason.INVALID_PDU_FIELD, fatal=False)
    if task.state == FAILED:
        if task.sequence_pdu(pdu.ttt, pdu.final):
            _finish_failed(conn, task)
        return
    try:
        _take_data_out(conn, task, pdu)
    except DataOutError as exc:
        data_out_failed(conn, task, pdu, exc.sense)


def _take_data_out(conn: TargetConnection, task: Task, pdu: DataOut) -> None:
    if pdu.ttt == RESERVED_TAG:
        task.unsolicited(pdu.datasn, pdu.offset, pdu.data, pdu.final)
        if task.state == SOLICITING:
            send_r2ts(conn, task)
    else:
        r2t = task.r2ts.get(pdu.ttt)
        if r2t is None:
            raise RemoteProtocolError(f"Data-Out with unknown TTT 0x{pdu.ttt:08x}",
                                      RejectReason.PROTOCOL_ERROR)
        if task.solicited(r2t, pdu.datasn, pdu.offset, pdu.data, pdu.final):
            task.finish_r2t(r2t)
            send_r2ts(conn, task)
    if task.state == READY:
        if task.immediate:
            deliver(conn, task)
        else:
            conn.pump()


def data_out_failed(conn: TargetConnection, task: Task, pdu: DataOut, sense: bytes) -> None:
    """§7.8 (b): fail the task, answer once all its open sequences have ended."""
    if task.state != FAILED:
        task.fail(sense)
    if task.sequence_pdu(pdu.ttt, pdu.final):
        _finish_failed(conn, task)


def _finish_failed(conn: TargetConnection, task: Task) -> None:
    conn.drop_task(task)
    conn.aborted.add(task.itt)
    task.state = ABORTED  # leaves the delivery queue
    w = conn.window
    sense = task.sense
    seg = len(sense).to_bytes(2, "big") + sense if sense else b""
    conn.emit(pack_scsi_response(0, 0, task.fail_status, len(seg), task.itt, conn.next_statsn(),
                                 w.exp_cmdsn, w.max_cmdsn, task.responses, 0, 0), seg)
    conn.pump()


def send_r2ts(conn: TargetConnection, task: Task) -> None:
    w = conn.window
    for r in task.next_r2ts(conn.params, conn.new_ttt):
        task.responses += 1
        conn.emit(pack_r2t(task.lun_field, task.itt, r.ttt, conn.statsn, w.exp_cmdsn,
                           w.max_cmdsn, r.r2tsn, r.offset, r.length))


def send_result(conn: TargetConnection, task: Task, result: ScsiResult) -> None:
    status, sense, data = result.status, result.sense, result.data
    n = len(data)
    if not status and not sense:
        if task.read:  # the common read: one Data-In with the status (phase collapse)
            p = conn.params
            if not task.write and n == task.edtl and 0 < n <= p.peer_max_recv_data_segment \
                    and n <= p.max_burst_length:
                w = conn.window
                task.responses += 1
                conn.emit(pack_data_in(FINAL_BIT | DATA_IN_STATUS, 0, n, 0, task.itt,
                                       RESERVED_TAG, conn.next_statsn(), w.exp_cmdsn,
                                       w.max_cmdsn, 0, 0, 0), data)
                return
        elif task.write and result.data_out_used == task.edtl and not n:
            w = conn.window  # the common write: GOOD, no residual
            conn.emit(pack_scsi_response(0, 0, 0, 0, task.itt, conn.next_statsn(),
                                         w.exp_cmdsn, w.max_cmdsn, task.responses, 0, 0))
            return
    status = int(status)
    flags = residual = bidi_flags = bidi = n = 0
    if task.read:  # §11.4.5: residuals against the expected length of each direction
        read_flags, read_residual = _residual(task.read_len, len(data))
        n = min(len(data), task.read_len)
    if task.write:
        flags, residual = _residual(task.edtl, result.data_out_used)
        if task.read:  # bidirectional: o/u are the read's O/U shifted left by 2
            bidi_flags, bidi = read_flags << 2, read_residual
    elif task.read:
        flags, residual = read_flags, read_residual
    else:
        flags, residual = _residual(task.edtl, len(data))  # no data phase at all
    if n and _send_data_in(conn, task, data, n, status, sense, flags, residual):
        return
    w = conn.window
    seg = b"" if not sense else len(sense).to_bytes(2, "big") + sense
    conn.emit(pack_scsi_response(flags | bidi_flags, 0, status, len(seg), task.itt,
                                 conn.next_statsn(), w.exp_cmdsn, w.max_cmdsn,
                                 task.responses, bidi, residual), seg)


def _send_data_in(conn: TargetConnection, task: Task, data: Payload, n: int, status: int,
                  sense: bytes, flags: int, residual: int) -> bool:
    """Data-In PDUs for ``data[:n]``; True if the status went with the last one."""
    w = conn.window
    collapse = status in _COLLAPSE_OK and not sense and not (task.read and task.write)
    seg = conn.params.peer_max_recv_data_segment
    burst = conn.params.max_burst_length
    view = data if isinstance(data, (memoryview, FileSpan)) else memoryview(data)
    itt, emit, datasn, off = task.itt, conn.emit, 0, 0
    while off < n:
        burst_end = min(off + burst, n)
        while off < burst_end:
            end = min(off + seg, burst_end)
            if end == n and collapse:
                emit(pack_data_in(FINAL_BIT | DATA_IN_STATUS | flags, status, end - off, 0,
                                  itt, RESERVED_TAG, conn.next_statsn(), w.exp_cmdsn,
                                  w.max_cmdsn, datasn, off, residual), view[off:end])
            else:
                emit(pack_data_in(FINAL_BIT if end == burst_end else 0, 0, end - off, 0,
                                  itt, RESERVED_TAG, 0, w.exp_cmdsn, w.max_cmdsn, datasn,
                                  off, 0), view[off:end])
            datasn += 1
            off = end
    task.responses += datasn
    return collapse


def bad_data_out(conn: TargetConnection, pdu: DataOut) -> None:
    """A Data-Out whose data digest failed: its task fails (§7.8 b)."""
    task = conn.tasks.get(pdu.itt)
    if task is not None and task.state not in (ABORTED, EXECUTING, READY):
        data_out_failed(conn, task, pdu, CRC_ERROR)
