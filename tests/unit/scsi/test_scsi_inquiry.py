"""INQUIRY: standard data and VPD pages 00h 80h 83h 86h B0h B1h B2h."""

from __future__ import annotations

import struct
import uuid

import pytest
from scsi_cdbs import inquiry
from scsi_harness import Harness, make

from blockyard.block.layer import Layer
from blockyard.block.ram import RamDisk
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskOptions, DiskUnit
from blockyard.scsi.sense import ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB

BAD_CDB = (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
UID = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")


async def test_standard_inquiry(h: Harness) -> None:
    data = await h.ok(inquiry(alloc=260))
    assert len(data) == data[4] + 5 == 74
    assert data[0] == 0x00 and data[1] == 0x00  # disk, not removable
    assert data[2] == 0x06 and data[3] & 0x0F == 2 and data[3] & 0x10  # SPC-4, RDF 2, HiSup
    assert data[3] & 0xC0 == 0  # AERC / TRMTSK clear
    assert data[7] & 0x02  # CMDQUE
    assert data[8:16] == b"BLOCKYRD"
    assert all(b == 0 or 0x20 <= b < 0x7F for b in data[8:36])
    versions = struct.unpack_from(">8H", data, 58)
    assert 0x04C0 in versions and 0x0460 in versions  # SBC-3, SPC-4


async def test_allocation_length_truncates(h: Harness) -> None:
    full = await h.ok(inquiry(alloc=255))
    for alloc in (0, 1, 5, 36, 73):
        assert await h.ok(inquiry(alloc=alloc)) == full[:alloc]
    assert await h.ok(inquiry(alloc=256)) == full


async def test_page_code_without_evpd_is_invalid(h: Harness) -> None:
    assert await h.sense(inquiry(0, 1)) == BAD_CDB
    assert await h.sense(inquiry(1, 0x42)) == BAD_CDB
    assert await h.sense(inquiry(2, 0)) == BAD_CDB  # CMDDT is obsolete


async def test_every_listed_vpd_page_answers(h: Harness) -> None:
    sup = await h.ok(inquiry(1, 0x00))
    pages = list(sup[4:4 + sup[3]])
    assert pages == sorted(pages) and {0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2} <= set(pages)
    for page in pages:
        data = await h.ok(inquiry(1, page))
        assert data[1] == page and len(data) == 4 + struct.unpack_from(">H", data, 2)[0]


def _unit(**kw: object) -> DiskUnit:
    return DiskUnit(RamDisk(1 << 20), DiskOptions(uuid=UID, **kw))  # type: ignore[arg-type]


async def test_serial_and_designators_come_from_the_uuid() -> None:
    h = Harness(ScsiTargetDevice({0: _unit()}), RamDisk(1))
    serial = await h.ok(inquiry(1, 0x80))
    assert serial[4:] == UID.hex.encode()
    ids = await h.ok(inquiry(1, 0x83))
    found, off = {}, 4
    while off < len(ids):
        found[ids[off + 1] & 0x3F] = ids[off + 4:off + 4 + ids[off + 3]]
        off += 4 + ids[off + 3]
    naa = found[0x03]
    assert naa[0] >> 4 == 0x3 and int.from_bytes(naa, "big") & ((1 << 60) - 1) == UID.int & (
        (1 << 60) - 1)
    assert found[0x01] == b"BLOCKYRD" + UID.hex.encode()
    h2 = Harness(ScsiTargetDevice({0: _unit()}), RamDisk(1))
    assert await h2.ok(inquiry(1, 0x83)) == ids  # stable across instances


async def test_block_limits_thin() -> None:
    h = make()
    bl = await h.ok(inquiry(1, 0xB0))
    assert bl[3] == 0x3C
    (wsnz, max_caw, gran, max_xfer, opt, prefetch, max_unmap, max_unmap_bd, opt_unmap, uga,
     max_ws, max_atomic) = struct.unpack_from(">BBHIIIIIIIQI", bl, 4)
    assert wsnz == 0 and max_caw == 255 and max_xfer == 65536
    assert 0 < max_unmap <= 1 << 20 and 256 <= max_unmap_bd <= 1 << 20
    assert max_ws == 0 and 0 < max_atomic <= max_xfer
    lbp = await h.ok(inquiry(1, 0xB2))
    assert lbp[5] & 0xE4 == 0xE4 and lbp[6] & 0x07 == 2  # LBPU LBPWS LBPWS10 LBPRZ, thin


class NoTrim(RamDisk):
    can_trim = False  # type: ignore[assignment]


async def test_block_limits_full_provisioning() -> None:
    h = Harness(ScsiTargetDevice({0: DiskUnit(NoTrim(1 << 20))}), RamDisk(1))
    bl = await h.ok(inquiry(1, 0xB0))
    max_unmap, max_unmap_bd = struct.unpack_from(">II", bl, 20)
    assert (max_unmap, max_unmap_bd) == (0, 0)
    lbp = await h.ok(inquiry(1, 0xB2))
    assert lbp[5] == 0


async def test_removable_sets_rmb() -> None:
    h = Harness(ScsiTargetDevice({0: _unit(removable=True)}), RamDisk(1))
    assert (await h.ok(inquiry()))[1] & 0x80


@pytest.mark.parametrize("bs", [512, 4096])
async def test_block_size_option(bs: int) -> None:
    layer: Layer = RamDisk(1 << 20)
    unit = DiskUnit(layer, DiskOptions(block_size=bs))
    assert unit.capacity_blocks == (1 << 20) // bs


def test_bad_block_size() -> None:
    with pytest.raises(ValueError):
        DiskUnit(RamDisk(1 << 20), DiskOptions(block_size=1024))
