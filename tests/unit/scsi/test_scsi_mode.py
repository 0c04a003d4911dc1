"""MODE SENSE(6/10) and MODE SELECT(6/10): caching, control, informational exceptions."""

from __future__ import annotations

import struct

from scsi_cdbs import I2, mode_select6, mode_sense6, mode_sense10, read10, tur, write10
from scsi_harness import BLOCKS, BS, Harness, make

from blockyard.scsi.disk import DiskOptions
from blockyard.scsi.sense import (
    DATA_PROTECT,
    ILLEGAL_REQUEST,
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_PARAM_LIST,
    MODE_PARAMETERS_CHANGED,
    PARAMETER_LIST_LENGTH_ERROR,
    SAVING_PARAMS_NOT_SUPPORTED,
    SOFTWARE_WRITE_PROTECTED,
    UNIT_ATTENTION,
)

BAD_CDB = (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
BAD_PARAM = (ILLEGAL_REQUEST, *INVALID_FIELD_IN_PARAM_LIST)


def pages_of(data: bytes, header: int) -> dict[int, bytes]:
    out, off = {}, header
    while off < len(data):
        out[data[off] & 0x3F] = data[off:off + 2 + data[off + 1]]
        off += 2 + data[off + 1]
    return out


async def test_mode_sense6_all_pages(h: Harness) -> None:
    data = await h.ok(mode_sense6(0x3F))
    assert data[0] == len(data) - 1
    assert data[2] == 0x10  # DPOFUA, not write-protected
    assert data[3] == 8
    blocks, bl_hi, bl_lo = struct.unpack_from(">IxBH", data, 4)
    assert blocks == BLOCKS and (bl_hi << 16 | bl_lo) == BS
    pages = pages_of(data, 12)
    assert set(pages) == {0x08, 0x0A, 0x1C}
    assert pages[0x08][2] & 0x04  # WCE
    assert pages[0x0A][3] >> 4 == 1 and pages[0x0A][2] & 0x04 == 0  # QAM 1, D_SENSE 0


async def test_mode_sense6_dbd_and_single_page(h: Harness) -> None:
    data = await h.ok(mode_sense6(0x0A, dbd=1))
    assert data[3] == 0 and list(pages_of(data, 4)) == [0x0A]
    all_pages = pages_of(await h.ok(mode_sense6(0x3F)), 12)
    assert pages_of(data, 4)[0x0A] == all_pages[0x0A]


async def test_mode_sense_truncates_to_allocation(h: Harness) -> None:
    full = await h.ok(mode_sense6(0x3F))
    assert await h.ok(mode_sense6(0x3F, alloc=4)) == full[:4]


async def test_mode_sense10_long_descriptor(h: Harness) -> None:
    data = await h.ok(mode_sense10(0x3F, llbaa=1))
    assert struct.unpack_from(">H", data)[0] == len(data) - 2
    assert data[4] & 0x01 and struct.unpack_from(">H", data, 6)[0] == 16
    assert struct.unpack_from(">Q4xI", data, 8) == (BLOCKS, BS)
    short = await h.ok(mode_sense10(0x08))
    assert struct.unpack_from(">H", short, 6)[0] == 8


async def test_page_control(h: Harness) -> None:
    changeable = pages_of(await h.ok(mode_sense6(0x3F, pc=1, dbd=1)), 4)
    assert changeable[0x08][2] == 0x04 and changeable[0x0A][4] == 0x08
    assert not any(changeable[0x1C][2:])
    await h.ok(mode_sense6(0x3F, pc=2))
    assert await h.sense(mode_sense6(0x3F, pc=3)) == (ILLEGAL_REQUEST,
                                                      *SAVING_PARAMS_NOT_SUPPORTED)


async def test_unknown_page_or_subpage(h: Harness) -> None:
    assert await h.sense(mode_sense6(0x19)) == BAD_CDB
    assert await h.sense(mode_sense6(0x0A, subpage=1)) == BAD_CDB
    await h.ok(mode_sense6(0x3F, subpage=0xFF))


def select_params(page: bytes) -> bytes:
    return bytes(4) + page


async def _current_page(h: Harness, code: int) -> bytearray:
    return bytearray(pages_of(await h.ok(mode_sense6(code, dbd=1)), 4)[code])


async def test_mode_select_swp_write_protects(h: Harness) -> None:
    page = await _current_page(h, 0x0A)
    page[4] |= 0x08
    await h.ok(mode_select6(len(page) + 4), select_params(bytes(page)))
    ms = await h.ok(mode_sense6(0x3F))
    assert ms[2] & 0x80  # WP
    await h.ok(read10(0, 1))
    assert await h.sense(write10(0, 1), bytes(BS)) == (DATA_PROTECT, *SOFTWARE_WRITE_PROTECTED)
    assert await h.sense(tur(), nexus=I2) == (UNIT_ATTENTION, *MODE_PARAMETERS_CHANGED)
    page[4] &= ~0x08
    await h.ok(mode_select6(len(page) + 4), select_params(bytes(page)))
    await h.ok(write10(0, 1), bytes(BS))


async def test_mode_select_wce_calls_back() -> None:
    seen: list[bool] = []
    h = make(DiskOptions(on_write_cache_change=seen.append))
    await h.clear_ua()
    page = await _current_page(h, 0x08)
    page[2] &= ~0x04
    await h.ok(mode_select6(len(page) + 4), select_params(bytes(page)))
    assert seen == [False] and h.unit.write_through
    await h.ok(write10(0, 1), bytes(BS))


async def test_mode_select_rejects_unchangeable_bytes(h: Harness) -> None:
    page = await _current_page(h, 0x0A)
    page[3] ^= 0x20
    assert await h.sense(mode_select6(len(page) + 4), select_params(bytes(page))) == BAD_PARAM
    page = await _current_page(h, 0x0A)
    page[0] |= 0x80  # PS is reserved in MODE SELECT
    assert await h.sense(mode_select6(len(page) + 4), select_params(bytes(page))) == BAD_PARAM
    assert await h.sense(mode_select6(12), select_params(bytes((0x19, 6)) + bytes(6))) \
        == BAD_PARAM


async def test_mode_select_checks(h: Harness) -> None:
    page = bytes(await _current_page(h, 0x0A))
    assert await h.sense(mode_select6(len(page) + 4, sp=1), select_params(page)) == BAD_CDB
    assert await h.sense(mode_select6(3), bytes(3)) == (ILLEGAL_REQUEST,
                                                        *PARAMETER_LIST_LENGTH_ERROR)
    assert await h.sense(mode_select6(16), select_params(page)[:10]) == (
        ILLEGAL_REQUEST, *PARAMETER_LIST_LENGTH_ERROR)
    await h.ok(mode_select6(0))
    await h.ok(mode_select6(len(page) + 4), select_params(page))  # no change, no UA
    assert (await h.run(tur(), nexus=I2)).status == 0
    bd = struct.pack(">IxBH", 0, 0, 4096)
    params = bytes((0, 0, 0, 8)) + bd + page
    assert await h.sense(mode_select6(len(params)), params) == BAD_PARAM


async def test_mode_select10(h: Harness) -> None:
    page = await _current_page(h, 0x08)
    page[2] &= ~0x04
    params = bytes(8) + bytes(page)
    cdb = struct.pack(">BB5xHB", 0x55, 0x10, len(params), 0)
    await h.ok(cdb, params)
    assert not h.unit.mode.wce
    ms = await h.ok(mode_sense10(0x08, dbd=1))
    assert not pages_of(ms, 8)[0x08][2] & 0x04
    long_bd = struct.pack(">Q4xI", 0, BS)
    params = bytes((0, 0, 0, 0, 1, 0, 0, 16)) + long_bd + bytes(page)
    await h.ok(struct.pack(">BB5xHB", 0x55, 0x10, len(params), 0), params)
    bad = bytes((0, 0, 0, 0, 1, 0, 0, 12)) + bytes(12) + bytes(page)
    assert await h.sense(struct.pack(">BB5xHB", 0x55, 0x10, len(bad), 0), bad) == BAD_PARAM
