"""READ(10/16) and WRITE(10/16) on a disk without the general pipeline, when none of it applies.

``LogicalUnit.execute`` takes every command through unit attentions, the
command table, reservations and the medium check, then the handler checks
its CDB, the range, the transfer length and write protection (unit.py,
sbc_rw.py).  For the commands that carry the data, in the ordinary case
none of those has anything to say, and walking through them costs more
than the I/O of a 4 KiB page-cache hit.  ``plan`` checks, without side
effects, exactly the conditions under which the general path would do
nothing but the I/O:

* the I_T nexus has been seen by the unit and has no unit attention pending
  (first contact and UA reporting happen on the general path);
* the capacity has not moved since the last look (``poll_changes``);
* no reservation of any kind is held; the medium is present;
* byte 1 has no bit outside DPO/FUA/FUA_NV (so no protection field), NACA
  is clear, the transfer length is not zero, the blocks lie inside the
  capacity and within the Block Limits maximum;
* writes: the unit is writable (not read-only, no software write protect),
  exactly the bytes the CDB needs arrived (no residual), and no
  read-modify-write command holds or waits for the I/O gate.

When every one holds, ``read_now`` / ``read`` / ``write`` do what the general
path would have done (the same layer calls, the same sense for a
``BlockError``); otherwise the command takes the general path, which gives
the same answer or the error.  A read the transport may send by reference
(``ScsiCommand.by_reference``) of a layer with a ``sendfile_fd`` answers a
``FileSpan`` instead of bytes; a small one of a layer with ``sync_pread``
is read at once, without a coroutine (``ScsiTargetDevice.start``).  Writes to a
layer with ``sync_pwrite`` are done at once when small, or handed to the
caller as a ``ThreadedWrite`` to run on one of its threads.
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from blockyard.errors import BlockError
from blockyard.scsi.sbc_rw import RW_FLAGS
from blockyard.scsi.sense import HARDWARE_ERROR, INTERNAL_TARGET_FAILURE, ScsiError, check_condition
from blockyard.scsi.task import FileSpan, ScsiCommand, ScsiResult
from blockyard.scsi.unit import block_error

if TYPE_CHECKING:
    from blockyard.scsi.disk import DiskUnit

log = logging.getLogger("blockyard.scsi.unit")

READ_10, WRITE_10, READ_16, WRITE_16 = 0x28, 0x2A, 0x88, 0x8A
_RW10 = struct.Struct(">xBIxHB")  # flags, lba, length, control
_RW16 = struct.Struct(">xBQIxB")  # flags, lba, length, control
_BAD_FLAGS = ~RW_FLAGS & 0xFF | 0xE0  # reserved bits and the protection field
_NACA = 0x04
OPCODES = frozenset({READ_10, WRITE_10, READ_16, WRITE_16})
INLINE_READ_MAX = 64 << 10  # larger reads are awaited (the layer sends them to a thread)
INLINE_WRITE_MAX = 64 << 10  # larger (or FUA) writes go to a thread (ThreadedWrite)
_ERRNO = {errno.EDQUOT: errno.ENOSPC, errno.EFBIG: errno.ENOSPC}


def plan(unit: DiskUnit, cmd: ScsiCommand) -> tuple[int, int, bool, bool] | None:
    """``(offset, length, write, fua)`` in bytes if the fast path may run ``cmd``."""
    cdb = cmd.cdb
    op = cdb[0]
    if (op == READ_16 or op == WRITE_16) and len(cdb) >= 16:
        flags, lba, blocks, control = _RW16.unpack_from(cdb)
    elif (op == READ_10 or op == WRITE_10) and len(cdb) >= 10:
        flags, lba, blocks, control = _RW10.unpack_from(cdb)
    else:
        return None
    if flags & _BAD_FLAGS or control & _NACA or not blocks:
        return None
    pending = unit.ua._pending.get(cmd.nexus)
    if pending is None or pending or unit.res.active or not unit.medium_present:
        return None
    bs = unit.block_size
    capacity = unit.layer.size // bs
    if capacity != unit._known_capacity or lba + blocks > capacity \
            or blocks > unit.max_transfer_blocks:
        return None
    length = blocks * bs
    if op & 0x02:  # WRITE
        if unit.options.read_only or unit.layer.read_only or unit.mode.swp:
            return None
        data = cmd.data_out
        if data is None or len(data) != length or unit.gate.busy:
            return None
        return lba * bs, length, True, bool(flags & 0x08) or not unit.mode.wce
    return lba * bs, length, False, False


def answer_now(unit: DiskUnit, cmd: ScsiCommand) -> ScsiResult | None:
    """The result of ``cmd`` if the fast path answers it without waiting and without a
    thread (a page-cache read or small write, or a read sent by reference); None, with
    nothing started, otherwise.  (``read_now`` and ``write_now`` inlined: this runs for
    every small command, where each call level costs.)"""
    io = plan(unit, cmd)
    if io is None:
        return None
    offset, length, writing, fua = io
    layer = unit.layer
    try:
        if writing:
            writer = layer.sync_pwrite
            if writer is None or length > INLINE_WRITE_MAX or fua:
                return None
            writer(offset, cmd.data_out, False)  # type: ignore[arg-type]
            return ScsiResult(data_out_used=length)
        if cmd.by_reference and layer.sendfile_fd is not None:
            return ScsiResult(data=FileSpan(layer.sendfile_fd, offset, length))
        reader = layer.sync_pread
        if reader is None or length > INLINE_READ_MAX:
            return None
        return ScsiResult(data=reader(offset, length))
    except OSError as exc:
        return _os_error(exc, writing)
    except Exception:
        return _bug(unit, cmd)


def read_now(unit: DiskUnit, cmd: ScsiCommand, offset: int, length: int) -> ScsiResult | None:
    """A read ``plan`` accepted, answered without waiting when the layer allows it: as a
    ``FileSpan`` (sent by reference) or through ``sync_pread`` (small reads, the page
    cache); None if the read has to be awaited (``read``)."""
    layer = unit.layer
    if cmd.by_reference and layer.sendfile_fd is not None:
        return ScsiResult(data=FileSpan(layer.sendfile_fd, offset, length))
    reader = layer.sync_pread
    if reader is None or length > INLINE_READ_MAX:
        return None
    try:
        return ScsiResult(data=reader(offset, length))
    except OSError as exc:
        return _os_error(exc, False)
    except Exception:
        return _bug(unit, cmd)


async def read(unit: DiskUnit, cmd: ScsiCommand, offset: int, length: int) -> ScsiResult:
    try:
        return ScsiResult(data=await unit.layer.pread(offset, length))
    except BlockError as err:
        return check_condition(block_error(err, False))
    except Exception:
        return _bug(unit, cmd)


def write_now(unit: DiskUnit, cmd: ScsiCommand, offset: int, length: int,
              fua: bool) -> ScsiResult | ThreadedWrite | None:
    """A write ``plan`` accepted, through the layer's ``sync_pwrite``: done at once when it
    is small and not FUA (the page cache), else handed back as a ``ThreadedWrite`` for
    the caller to run on a thread; None without ``sync_pwrite`` (then await ``write``)."""
    writer = unit.layer.sync_pwrite
    if writer is None:
        return None
    if length > INLINE_WRITE_MAX or fua:
        unit.gate.enter_shared()
        return ThreadedWrite(unit, cmd, writer, offset, length, fua)
    try:
        writer(offset, cmd.data_out, False)  # type: ignore[arg-type]
        return ScsiResult(data_out_used=length)
    except OSError as exc:
        return _os_error(exc, True)
    except Exception:
        return _bug(unit, cmd)


class ThreadedWrite:
    """A write for the caller to run on a thread of its own: ``run()`` there (blocking,
    thread-safe), then ``finish()`` back on the caller's thread for the result.  The
    gate is held shared in between; ``data`` keeps no other reference once ``run`` has
    returned (``sync_pwrite``), so the caller may recycle it."""

    __slots__ = ("unit", "cmd", "writer", "offset", "length", "fua", "error")

    def __init__(self, unit: DiskUnit, cmd: ScsiCommand, writer: Callable[[int, Any, bool], None],
                 offset: int, length: int, fua: bool) -> None:
        self.unit, self.cmd, self.writer = unit, cmd, writer
        self.offset, self.length, self.fua = offset, length, fua
        self.error: BaseException | None = None

    @property
    def data(self) -> Any:
        return self.cmd.data_out

    def run(self) -> None:
        try:
            self.writer(self.offset, self.cmd.data_out, self.fua)
        except BaseException as exc:  # reported by finish(), on the caller's thread
            self.error = exc

    def finish(self) -> ScsiResult:
        self.unit.gate.release(False)
        err = self.error
        if err is None:
            return ScsiResult(data_out_used=self.length)
        if isinstance(err, OSError):
            return _os_error(err, True)
        try:
            raise err
        except Exception:
            return _bug(self.unit, self.cmd)


def _os_error(exc: OSError, writing: bool) -> ScsiResult:
    """As the raw layer maps an OSError (block/raw.py), then as the LU maps the errno."""
    err = exc.errno or errno.EIO
    return check_condition(block_error(BlockError(_ERRNO.get(err, err), str(exc)), writing))


async def write(unit: DiskUnit, cmd: ScsiCommand, offset: int, length: int,
                fua: bool) -> ScsiResult:
    gate = unit.gate
    gate.enter_shared()
    try:
        await unit.layer.pwrite(offset, cmd.data_out, fua)  # type: ignore[arg-type]
        return ScsiResult(data_out_used=length)
    except BlockError as err:
        return check_condition(block_error(err, True))
    except Exception:
        return _bug(unit, cmd)
    finally:
        gate.release(False)


def _bug(unit: DiskUnit, cmd: ScsiCommand) -> ScsiResult:
    """Anything but a BlockError is a bug: answer, log, keep the session (as
    ``LogicalUnit.execute`` does)."""
    log.exception("LUN %d: command %s failed", unit.lun, bytes(cmd.cdb[:16]).hex())
    return check_condition(ScsiError(HARDWARE_ERROR, *INTERNAL_TARGET_FAILURE))
