"""``RemoteLun``: a LUN of a remote iSCSI target as a leaf block ``Layer``.

The layer speaks SCSI through a ``ScsiPath`` -- in practice
``transport.iscsi_initiator.IscsiSession``, which pipelines commands,
reconnects and reissues on its own (``open_remote`` builds the pair; block
never imports transport).  What the LUN can do was read once at open
(``LunProperties``: READ CAPACITY 16, VPD 83h/B0h/B2h, MODE SENSE):

* ``pread`` / ``pwrite`` -> READ(16) / WRITE(16), FUA bit when the target
  has DPOFUA (else a SYNCHRONIZE CACHE after the write), split at the
  target's MAXIMUM TRANSFER LENGTH (and at ``max_io``), the pieces in flight
  together; unaligned requests read whole blocks (and write them back,
  serialized: clients that honour ``limits.minimum`` never need this);
* ``flush`` -> SYNCHRONIZE CACHE(16) (10 if 16 is refused);
* ``trim`` -> UNMAP, only when LBPME and LBPU are set and B0h gives an
  unmap limit; whole blocks inside the range only;
* ``zero`` -> WRITE SAME(16) of one zero block (UNMAP bit when ``may_trim``
  and LBPWS + LBPRZ), only when B0h/B2h advertise it; else zero buffers;
* ``extents`` -> GET LBA STATUS when LBPME is set (deallocated = hole, and
  zero when LBPRZ).

Unit attentions are retried (a reconnect reports I_T NEXUS LOSS once), as
are BUSY and TASK SET FULL with growing waits; any other CHECK CONDITION is a
``BlockError`` whose message names the URL, the command and the decoded
sense.  Host caching never applies to a remote medium (``host_cache``).
"""

from __future__ import annotations

import asyncio
import errno
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from blockyard.block.formats.base import ImageInfo
from blockyard.block.layer import HOLE, ZERO, Buffer, Extent, Layer, Limits
from blockyard.errors import BlockError
from blockyard.iscsi import initiator_scsi as scsi
from blockyard.iscsi.initiator_command import Command

GOOD, CHECK_CONDITION, BUSY, TASK_SET_FULL = 0x00, 0x02, 0x08, 0x28
UNIT_ATTENTION, NOT_READY = 0x6, 0x2
RETRIES = 7
MAX_IO = 4 << 20  # bytes per READ/WRITE command; larger requests are split and pipelined
WRITE_SAME_CHUNK = 1 << 16  # blocks per WRITE SAME when the target states no limit
REMOTE_FORMAT = "iscsi"  # the format name of a remote medium (registry, ImageInfo)
# Registry UUIDs of remote LUNs: uuid5(REMOTE_NAMESPACE, VPD 83h identity), stable per LUN;
# a differencing image over a LUN names it by this UUID (its link UUID).
REMOTE_NAMESPACE = uuidlib.UUID("9beda132-119a-4ce5-a267-f29e3d54bb90")
_ERRNO = {0x7: errno.EPERM, 0x3: errno.EIO, 0x4: errno.EIO, 0xB: errno.EIO}


def is_remote(location: str) -> bool:
    """True for a remote medium's location (an ``iscsi://`` URL)."""
    return location.startswith("iscsi://")


def identity_uuid(identity: str) -> str:
    """The UUID a LUN with VPD 83h ``identity`` has as a medium (and as a parent)."""
    return str(uuidlib.uuid5(REMOTE_NAMESPACE, identity.lower()))


class ScsiPath(Protocol):
    display: str

    async def execute(self, lun: int, cdb: bytes, *, data_out: Buffer | None = None,
                      read_len: int = 0, into: memoryview | None = None,
                      timeout: float | None = None) -> Command: ...

    async def close(self) -> None: ...


@dataclass
class LunProperties:
    """What the target told us about the LUN at open (``iscsi_initiator_lun``)."""

    blocks: int
    block_size: int
    inquiry: scsi.Inquiry
    identity: str = ""
    serial: str = ""
    write_protected: bool = False
    dpofua: bool = False
    lbpme: bool = False
    lbprz: bool = False
    limits: scsi.BlockLimits = field(default_factory=scsi.BlockLimits)
    provisioning: scsi.Provisioning = field(default_factory=scsi.Provisioning)
    lba_status: bool = False
    negotiated: dict[str, str] = field(default_factory=dict)


class ScsiStatusError(BlockError):
    def __init__(self, err: int, message: str, status: int, sense: scsi.Sense | None) -> None:
        super().__init__(err, message)
        self.status = status
        self.sense = sense


async def run_scsi(path: ScsiPath, lun: int, cdb: bytes, what: str, *,
                   data_out: Buffer | None = None, read_len: int = 0,
                   into: memoryview | None = None) -> Command:
    """One command with the retries SCSI expects; other failures raise ScsiStatusError."""
    delay = 0.01
    for attempt in range(RETRIES + 1):
        cmd = await path.execute(lun, cdb, data_out=data_out, read_len=read_len, into=into)
        if cmd.status == GOOD:
            return cmd
        sense = scsi.decode_sense(cmd.sense)
        retry = cmd.status in (BUSY, TASK_SET_FULL) or (
            sense is not None and (sense.key == UNIT_ATTENTION or
                                   (sense.key == NOT_READY and sense.asc == 0x04)))
        if not retry or attempt == RETRIES:
            break
        if cmd.status != CHECK_CONDITION or sense is None or sense.key != UNIT_ATTENTION:
            await asyncio.sleep(delay)
            delay *= 4
    err = errno.EIO
    if sense is not None:
        err = errno.ENOSPC if (sense.asc, sense.ascq) == (0x27, 0x07) else \
            _ERRNO.get(sense.key, errno.EIO)
    raise ScsiStatusError(err, f"{path.display}: {what}: "
                               f"{scsi.describe_status(cmd.status, cmd.sense)}",
                          cmd.status, sense)


def _split(start: int, count: int, most: int) -> list[tuple[int, int]]:
    return [(lba, min(most, start + count - lba)) for lba in range(start, start + count, most)]


class RemoteLun(Layer):
    """See the module docstring."""

    host_cache = False  # the cache-policy layer never applies to remote media
    max_io = MAX_IO

    def __init__(self, path: ScsiPath, lun: int, props: LunProperties, *,
                 read_only: bool = False) -> None:
        super().__init__()
        self.path, self.lun, self.props = path, lun, props
        self.display = path.display
        self.block_size = bs = props.block_size
        self.size = props.blocks * bs
        self.read_only = read_only or props.write_protected
        self.uuid = props.identity or props.serial
        limit = props.limits.max_transfer * bs or self.max_io
        self._io_blocks = max(1, min(limit, self.max_io) // bs)
        self._io_bytes = self._io_blocks * bs
        start = getattr(path, "start", None)  # IscsiSession: the command's future itself
        self._start: Callable[..., Awaitable[Command]] = start or path.execute
        self._sync16 = True
        self._closed = False
        self._rmw = asyncio.Lock()
        prov, lim = props.provisioning, props.limits
        self._unmap = props.lbpme and prov.lbpu and lim.max_unmap_lbas > 0
        self._write_same = lim.max_write_same > 0 or (props.lbpme and prov.lbpws)
        self._ws_unmap = props.lbpme and prov.lbpws and props.lbprz

    # ---- capabilities -----------------------------------------------------------------
    can_flush = True  # type: ignore[assignment]
    can_fua = True  # type: ignore[assignment]
    can_multi_conn = False  # type: ignore[assignment]

    @property
    def can_trim(self) -> bool:  # type: ignore[override]
        return self._unmap and not self.read_only

    @property
    def can_extents(self) -> bool:  # type: ignore[override]
        return self.props.lba_status

    @property
    def limits(self) -> Limits:  # type: ignore[override]
        bs = self.block_size
        optimal = self.props.limits.optimal_transfer * bs
        return Limits(bs, max(bs, min(optimal, 1 << 20)) if optimal else max(bs, 4096),
                      32 << 20)

    def describe(self) -> str:
        return f"iscsi:{self.display}"

    def info(self) -> ImageInfo:
        p = self.props
        extra: dict[str, Any] = {
            "vendor": p.inquiry.vendor, "product": p.inquiry.product,
            "revision": p.inquiry.revision, "serial": p.serial, "lun": self.lun,
            "thin": p.lbpme, "write_protected": p.write_protected, "fua": p.dpofua,
            "max_transfer_blocks": p.limits.max_transfer, "negotiated": dict(p.negotiated)}
        return ImageInfo(self.display, "iscsi", "remote", self.size, 0, uuid=self.uuid or None,
                         block_size=self.block_size, sector_size=self.block_size, extra=extra)

    async def _run(self, cdb: bytes, what: str, **kw: Any) -> Command:
        return await run_scsi(self.path, self.lun, cdb, what, **kw)

    # ---- reads and writes ----------------------------------------------------------------
    # A request that fits one command (the usual case) awaits the session's future
    # directly (``start``, when the path has it): five coroutine frames less on every
    # resume.  ``run_scsi`` (retries, errors) only sees commands that did not end GOOD,
    # replayed from the answer we already have.
    async def pread(self, offset: int, length: int) -> Buffer:
        bs = self.block_size
        if offset % bs or length % bs or not 0 < length <= self._io_bytes or offset < 0 \
                or offset + length > self.size:
            return await super().pread(offset, length)  # checks, then the general path
        cdb = scsi.read16(offset // bs, length // bs)
        # no ``into``: the session picks the buffer (a recycled one for large reads)
        cmd = await self._start(self.lun, cdb, read_len=length)
        if cmd.status != GOOD:
            cmd = await self._settle(cmd, cdb, f"READ(16) at LBA {offset // bs}",
                                     read_len=length)
        buf = cmd.buffer
        assert buf is not None
        if cmd.received < length:  # underflow: never show a recycled buffer's old bytes
            buf[cmd.received:] = bytes(length - cmd.received)
        return buf

    async def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        bs = self.block_size
        n = len(data)
        if fua or self.read_only or offset % bs or n % bs or not 0 < n <= self._io_bytes \
                or offset < 0 or offset + n > self.size:
            return await super().pwrite(offset, data, fua)  # checks, then the general path
        cdb = scsi.write16(offset // bs, n // bs, False)
        cmd = await self._start(self.lun, cdb, data_out=data)
        if cmd.status != GOOD:
            await self._settle(cmd, cdb, f"WRITE(16) at LBA {offset // bs}", data_out=data)

    async def _pread(self, offset: int, length: int) -> Buffer:
        bs = self.block_size
        if offset % bs or length % bs:
            start = offset - offset % bs
            end = -(-(offset + length) // bs) * bs
            whole = await self._read_blocks(start, end - start)
            return memoryview(whole)[offset - start:offset - start + length]
        return await self._read_blocks(offset, length)

    async def readinto(self, offset: int, buf: memoryview) -> None:
        """Read ``len(buf)`` bytes at ``offset`` straight into ``buf`` (block-aligned).

        For copy loops that recycle their buffers: no allocation, no zero-filling.
        """
        bs = self.block_size
        if offset % bs or len(buf) % bs or offset < 0 or offset + len(buf) > self.size:
            raise BlockError(errno.EINVAL, f"readinto {offset}+{len(buf)}: not whole blocks "
                                           f"of {bs} bytes inside 0..{self.size}")
        await self._read_view(offset, buf)

    async def _read_blocks(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        await self._read_view(offset, memoryview(buf))
        return buf

    async def _read_view(self, offset: int, view: memoryview) -> None:
        length = len(view)
        bs = self.block_size
        if 0 < length <= self._io_bytes:
            lba = offset // bs
            cdb = scsi.read16(lba, length // bs)
            cmd = await self._start(self.lun, cdb, read_len=length, into=view)
            if cmd.status != GOOD:
                cmd = await self._settle(cmd, cdb, f"READ(16) at LBA {lba}",
                                         read_len=length, into=view)
            if cmd.received < length:  # underflow: the caller's buffer may hold old bytes
                view[cmd.received:] = bytes(length - cmd.received)
            return
        parts = _split(offset // bs, length // bs, self._io_blocks)
        await asyncio.gather(*[
            self._run(scsi.read16(lba, n), f"READ(16) at LBA {lba}", read_len=n * bs,
                      into=view[(lba * bs - offset):(lba + n) * bs - offset])
            for lba, n in parts])

    async def _pwrite(self, offset: int, data: Buffer, fua: bool) -> None:
        bs = self.block_size
        n = len(data)
        if offset % bs or n % bs:
            await self._write_unaligned(offset, data, fua)
            return
        native = fua and self.props.dpofua
        if 0 < n <= self._io_bytes:
            lba = offset // bs
            cdb = scsi.write16(lba, n // bs, native)
            cmd = await self._start(self.lun, cdb, data_out=data)
            if cmd.status != GOOD:
                await self._settle(cmd, cdb, f"WRITE(16) at LBA {lba}", data_out=data)
        else:
            view = data if type(data) is memoryview else memoryview(data)
            await asyncio.gather(*[
                self._run(scsi.write16(lba, k, native), f"WRITE(16) at LBA {lba}",
                          data_out=view[lba * bs - offset:(lba + k) * bs - offset])
                for lba, k in _split(offset // bs, n // bs, self._io_blocks)])
        if fua and not native:
            await self._flush()

    async def _settle(self, first: Command, cdb: bytes, what: str, **kw: Any) -> Command:
        """``run_scsi`` for a command whose first answer (not GOOD) is ``first``."""
        return await run_scsi(_Replay(self.path, first), self.lun, cdb, what, **kw)

    async def _write_unaligned(self, offset: int, data: Buffer, fua: bool) -> None:
        bs = self.block_size
        start = offset - offset % bs
        end = -(-(offset + len(data)) // bs) * bs
        async with self._rmw:  # read-modify-write of the edge blocks
            whole = await self._read_blocks(start, end - start)
            whole[offset - start:offset - start + len(data)] = data
            await self._pwrite(start, whole, fua)

    async def _flush(self) -> None:
        if self._sync16:
            try:
                await self._run(scsi.synchronize_cache16(), "SYNCHRONIZE CACHE(16)")
                return
            except ScsiStatusError as exc:
                if exc.sense is None or exc.sense.asc != 0x20:  # INVALID OPCODE: try (10)
                    raise
                self._sync16 = False
        await self._run(scsi.synchronize_cache10(), "SYNCHRONIZE CACHE(10)")

    # ---- trim, zero, extents ---------------------------------------------------------------
    async def _trim(self, offset: int, length: int, fua: bool) -> None:
        bs = self.block_size
        first, last = -(-offset // bs), (offset + length) // bs
        if last > first:
            most = min(self.props.limits.max_unmap_lbas, 1 << 22)
            jobs = []
            for lba, n in _split(first, last - first, most):
                cdb, params = scsi.unmap([(lba, n)])
                jobs.append(self._run(cdb, f"UNMAP at LBA {lba}", data_out=params))
            await asyncio.gather(*jobs)
        if fua:
            await self._flush()

    async def _zero(self, offset: int, length: int, may_trim: bool, fast: bool,
                    fua: bool) -> None:
        bs = self.block_size
        first, last = -(-offset // bs), (offset + length) // bs
        if not self._write_same or last <= first:
            await self.write_zeroes_slowly(offset, length, fua)
            return
        if first * bs > offset:
            await self._pwrite(offset, bytes(first * bs - offset), False)
        if (offset + length) > last * bs:
            await self._pwrite(last * bs, bytes(offset + length - last * bs), False)
        unmap = may_trim and self._ws_unmap
        most = self.props.limits.max_write_same or WRITE_SAME_CHUNK
        block = bytes(bs)
        await asyncio.gather(*[self._run(scsi.write_same16(lba, n, unmap),
                                         f"WRITE SAME(16) at LBA {lba}", data_out=block)
                               for lba, n in _split(first, last - first, most)])
        if fua:
            await self._flush()

    async def _extents(self, offset: int, length: int) -> list[Extent]:
        if not self.props.lba_status:
            return [Extent(length, 0)]
        bs = self.block_size
        cmd = await self._run(scsi.get_lba_status(offset // bs), "GET LBA STATUS",
                              read_len=4096)
        out: list[Extent] = []
        pos, end = offset, offset + length
        hole = HOLE | (ZERO if self.props.lbprz else 0)
        for lba, blocks, status in scsi.parse_lba_status(bytes(cmd.data)):
            stop = min(end, (lba + blocks) * bs)
            if lba * bs > pos or stop <= pos:
                break  # not contiguous with what we have: report what we know
            flags = hole if status == 1 else 0
            if out and out[-1].flags == flags:
                out[-1] = Extent(out[-1].length + stop - pos, flags)
            else:
                out.append(Extent(stop - pos, flags))
            pos = stop
            if pos >= end:
                break
        return out or [Extent(min(length, bs - offset % bs), 0)]

    async def _close(self) -> None:
        if not self._closed:  # a chain's borrowed base may be closed by more than one owner
            self._closed = True
            await self.path.close()


class _Replay:
    """A ``ScsiPath`` whose first ``execute`` answers with a command already run."""

    def __init__(self, path: ScsiPath, first: Command) -> None:
        self.path = path
        self.first: Command | None = first
        self.display = path.display

    async def execute(self, lun: int, cdb: bytes, **kw: Any) -> Command:
        first, self.first = self.first, None
        return first if first is not None else await self.path.execute(lun, cdb, **kw)

    async def close(self) -> None:
        await self.path.close()


def remote_lun(layer: Layer | None) -> RemoteLun | None:
    """The ``RemoteLun`` a stack is built on -- through filters (write mode, read-only,
    snapshot swap), and below a differencing chain (its borrowed base) -- or None."""
    from blockyard.block.chain import ChainLayer

    while layer is not None:
        if isinstance(layer, RemoteLun):
            return layer
        layer = layer.below if isinstance(layer, ChainLayer) else layer.inner
    return None
