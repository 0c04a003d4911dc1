"""``DiskUnit``: a direct-access block device (peripheral type 0, SBC-3) over a ``Layer``.

Options (``DiskOptions``):

* ``read_only``: write-protected unit: MODE SENSE WP=1, every write gives
  DATA PROTECT / WRITE PROTECTED (27h/00h);
* ``removable``: RMB=1, PREVENT ALLOW MEDIUM REMOVAL and START STOP UNIT
  with LOEJ eject and load the medium (NOT READY 3Ah/00h while ejected);
* ``write_cache``: the initial WCE of the caching mode page; MODE SELECT may
  change it and ``on_write_cache_change`` hears about it (the host-cache
  policy hooks in there). With WCE=0 every write is forced unit access;
* ``uuid`` and ``vendor``/``product``/``revision``: the identity (``vpd.py``);
* ``thin``: logical block provisioning management (LBPME) when the layer can
  trim; ``None`` follows ``layer.can_trim``;
* ``block_size``: 512 (default) or 4096.

The command table is SPC (``spc.py``) + mode pages (``mode.py``) + SBC
(``sbc_rw.py``, ``sbc_misc.py``) + third-party copy (``xcopy.py``).
"""

from __future__ import annotations

import uuid as uuid_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from blockyard.block.layer import Buffer, Layer
from blockyard.scsi import fastpath, sbc_rw
from blockyard.scsi.commands import CommandTable
from blockyard.scsi.gate import IoGate
from blockyard.scsi.mode import MODE_COMMANDS, ModeState
from blockyard.scsi.sbc_misc import SBC_MISC_COMMANDS
from blockyard.scsi.sbc_rw import SBC_RW_COMMANDS
from blockyard.scsi.sense import (
    CAPACITY_DATA_CHANGED,
    DATA_PROTECT,
    MEDIUM_MAY_HAVE_CHANGED,
    SOFTWARE_WRITE_PROTECTED,
    WRITE_PROTECTED,
    ScsiError,
    invalid_cdb,
    lba_out_of_range,
)
from blockyard.scsi.spc import SPC_COMMANDS
from blockyard.scsi.task import Nexus
from blockyard.scsi.unit import LogicalUnit
from blockyard.scsi.vpd import Identity, standard_inquiry, vpd_page
from blockyard.scsi.xcopy import XCOPY_COMMANDS, CopyStatus


@dataclass(frozen=True)
class DiskOptions:
    read_only: bool = False
    removable: bool = False
    write_cache: bool = True
    thin: bool | None = None
    block_size: int = 512
    uuid: uuid_mod.UUID = field(default_factory=uuid_mod.uuid4)
    vendor: str = "BLOCKYRD"
    product: str = "VIRTUAL DISK"
    revision: str = "0001"
    on_write_cache_change: Callable[[bool], None] | None = None


class DiskUnit(LogicalUnit):
    COMMANDS: ClassVar[CommandTable] = CommandTable(
        [*SPC_COMMANDS, *MODE_COMMANDS, *SBC_RW_COMMANDS, *SBC_MISC_COMMANDS,
         *XCOPY_COMMANDS])
    peripheral_type = 0x00
    WSNZ = False  # WRITE SAME with 0 blocks writes to the end of the medium
    MAX_COMPARE_AND_WRITE = 255  # the CDB field is one byte
    MAX_UNMAP_LBAS = 1 << 19
    MAX_UNMAP_DESCRIPTORS = 2048
    third_party_copy = True

    def __init__(self, layer: Layer, options: DiskOptions | None = None) -> None:
        opts = options or DiskOptions()
        if opts.block_size not in (512, 4096):
            raise ValueError("block size must be 512 or 4096")
        self.layer = layer
        self.options = opts
        self.block_size = opts.block_size
        self.removable = opts.removable
        self.thin = bool(layer.can_trim if opts.thin is None else opts.thin and layer.can_trim)
        self.identity = Identity(opts.vendor, opts.product, opts.revision, opts.uuid)
        self.mode = ModeState(wce=opts.write_cache)
        self.gate = IoGate()
        limits = layer.limits  # fixed for the life of the layer stack
        self.max_transfer_blocks = max(1, limits.maximum // self.block_size)
        self.optimal_granularity = max(1, limits.preferred // self.block_size)
        self.copies: dict[tuple[Nexus, int], CopyStatus] = {}  # RECEIVE COPY RESULTS
        super().__init__()
        self._known_capacity = self.capacity_blocks
        self.fast_rw = self._plain_rw()

    def _plain_rw(self) -> bool:
        """True if READ/WRITE(10/16) mean what scsi/fastpath.py assumes for this unit."""
        handlers = {op: self.commands.get(op, None) for op in fastpath.OPCODES}
        return (type(self).execute is LogicalUnit.execute
                and type(self).read is DiskUnit.read and type(self).write is DiskUnit.write
                and all(c is not None and c.handler in (sbc_rw.read, sbc_rw.write)
                        and c.handler.__name__ == ("write" if op & 0x02 else "read")
                        for op, c in handlers.items()))

    # ---- geometry and limits ------------------------------------------------------
    @property
    def capacity_blocks(self) -> int:
        return self.layer.size // self.block_size


    @property
    def write_protected(self) -> bool:
        return self.options.read_only or self.layer.read_only or self.mode.swp

    @property
    def write_through(self) -> bool:
        return not self.mode.wce

    def poll_changes(self) -> None:
        """CAPACITY DATA HAS CHANGED (2Ah/09h) once the layer's size moves (SBC-3 4.10)."""
        now = self.capacity_blocks
        if now != self._known_capacity:
            self._known_capacity = now
            self.ua.establish(CAPACITY_DATA_CHANGED, self.ua.nexuses)

    def nexus_gone(self, nexus: Nexus) -> None:
        super().nexus_gone(nexus)
        for key in [k for k in self.copies if k[0] == nexus]:
            del self.copies[key]

    def set_medium(self, present: bool, by: Nexus) -> None:
        """Load (True) or eject the medium; a load is news to the other I_T nexuses."""
        if present and not self.medium_present:
            self.notify(MEDIUM_MAY_HAVE_CHANGED, except_=by)
        self.medium_present = present

    def set_mode(self, new: ModeState) -> None:
        wce_changed = new.wce != self.mode.wce
        self.mode = new
        if wce_changed and self.options.on_write_cache_change is not None:
            self.options.on_write_cache_change(new.wce)

    # ---- checks used by the handlers -----------------------------------------------
    def check_range(self, lba: int, blocks: int) -> None:
        """LOGICAL BLOCK ADDRESS OUT OF RANGE (SBC-3 4.5) past the last LBA."""
        if lba + blocks > self.capacity_blocks or (blocks == 0 and lba > self.capacity_blocks):
            raise lba_out_of_range()

    def check_transfer(self, blocks: int, field: int) -> None:
        """More than MAXIMUM TRANSFER LENGTH (Block Limits VPD) is INVALID FIELD IN CDB."""
        if blocks > self.max_transfer_blocks:
            raise invalid_cdb(field)

    def check_writable(self) -> None:
        if self.options.read_only or self.layer.read_only:
            raise ScsiError(DATA_PROTECT, *WRITE_PROTECTED)
        if self.mode.swp:
            raise ScsiError(DATA_PROTECT, *SOFTWARE_WRITE_PROTECTED)

    # ---- I/O in blocks -----------------------------------------------------------
    async def read(self, lba: int, blocks: int) -> Buffer:
        return await self.layer.pread(lba * self.block_size, blocks * self.block_size)

    async def write(self, lba: int, data: Buffer, fua: bool = False) -> None:
        await self.layer.pwrite(lba * self.block_size, data, fua or self.write_through)

    # ---- identity ----------------------------------------------------------------
    def standard_inquiry(self) -> bytes:
        return standard_inquiry(self)

    def vpd_page(self, page: int) -> bytes | None:
        return vpd_page(self, page)
