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
is read at once, without a coroutine (``ScsiTargetDevice.execute_now``).
"""

from __future__ import annotations

import errno
import logging
import struct
from typing import TYPE_CHECKING

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
    except OSError as exc:  # as the raw layer maps it (block/raw.py)
        err = exc.errno or errno.EIO
        return check_condition(block_error(BlockError(_ERRNO.get(err, err), str(exc)), False))
    except Exception:
        return _bug(unit, cmd)


async def read(unit: DiskUnit, cmd: ScsiCommand, offset: int, length: int) -> ScsiResult:
    try:
        return ScsiResult(data=await unit.layer.pread(offset, length))
    except BlockError as err:
        return check_condition(block_error(err, False))
    except Exception:
        return _bug(unit, cmd)


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
