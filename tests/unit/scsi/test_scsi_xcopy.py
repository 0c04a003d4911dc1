"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS between units of one device."""

from __future__ import annotations

import struct

from scsi_cdbs import I2, inquiry, read10, write10
from scsi_harness import BLOCKS, BS, Harness

from blockyard.block.ram import RamDisk
from blockyard.scsi.disk import DiskUnit
from blockyard.scsi.sense import (
    COPY_ABORTED,
    ILLEGAL_REQUEST,
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_PARAM_LIST,
    PARAMETER_LIST_LENGTH_ERROR,
    TOO_MANY_SEGMENT_DESCRIPTORS,
    TOO_MANY_TARGET_DESCRIPTORS,
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE,
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE,
)
from blockyard.scsi.xcopy import MAX_CSCD_DESCRIPTORS, MAX_SEGMENT_DESCRIPTORS


def xcopy_cdb(plen: int) -> bytes:
    return struct.pack(">BB8xIBB", 0x83, 0, plen, 0, 0)


def rcr_cdb(sa: int, list_id: int = 0, alloc: int = 1024) -> bytes:
    return struct.pack(">BBB7xIBB", 0x84, sa, list_id, alloc, 0, 0)


async def naa_of(h: Harness, lun: int = 0) -> bytes:
    page = await h.ok(inquiry(1, 0x83), lun=lun)
    off = 4
    while page[off + 1] & 0x0F != 3:
        off += 4 + page[off + 3]
    return page[off:off + 4 + page[off + 3]]


def target(designator: bytes, kind: int = 0xE4, byte1: int = 0) -> bytes:
    desc = bytearray(32)
    desc[0], desc[1] = kind, byte1
    desc[4:4 + len(designator)] = designator
    desc[29:32] = BS.to_bytes(3, "big")
    return bytes(desc)


def segment(src: int, dst: int, blocks: int, src_lba: int, dst_lba: int,
            kind: int = 0x02) -> bytes:
    return struct.pack(">BBHHH2xHQQ", kind, 0, 24, src, dst, blocks, src_lba, dst_lba)


def params(targets: list[bytes], segments: list[bytes], list_id: int = 1,
           usage: int = 0) -> bytes:
    t, s = b"".join(targets), b"".join(segments)
    return struct.pack(">BBH4xII", list_id, usage << 3, len(t), len(s), 0) + t + s


async def test_copy_within_one_unit_and_status(h: Harness) -> None:
    await h.ok(write10(0, 16), b"A" * 16 * BS)
    p = params([target(await naa_of(h))], [segment(0, 0, 16, 0, BLOCKS - 16)])
    result = await h.run(xcopy_cdb(len(p)), p)
    assert result.status == 0 and result.data_out_used == len(p)
    assert await h.ok(read10(BLOCKS - 16, 16)) == b"A" * 16 * BS
    status = await h.ok(rcr_cdb(0, 1))
    assert struct.unpack(">IBHBI", status) == (8, 0, 1, 0, 16 * BS)
    assert await h.sense(rcr_cdb(0, 1), nexus=I2) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
    assert await h.sense(rcr_cdb(0, 9)) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)


async def test_copy_between_units(h: Harness) -> None:
    h.device.add_lun(1, DiskUnit(RamDisk(1 << 20)))
    await h.clear_ua(lun=1)
    await h.clear_ua()
    await h.ok(write10(3, 4), b"Z" * 4 * BS)
    p = params([target(await naa_of(h, 0)), target(await naa_of(h, 1))],
               [segment(0, 1, 4, 3, 7)])
    await h.ok(xcopy_cdb(len(p)), p)
    assert await h.ok(read10(7, 4), lun=1) == b"Z" * 4 * BS


async def test_operating_parameters(h: Harness) -> None:
    data = await h.ok(rcr_cdb(3))
    assert struct.unpack_from(">I", data)[0] == len(data) - 4
    max_t, max_s, max_len = struct.unpack_from(">HHI", data, 8)
    assert (max_t, max_s) == (MAX_CSCD_DESCRIPTORS, MAX_SEGMENT_DESCRIPTORS)
    assert set(data[44:44 + data[43]]) == {0x02, 0xE4}


async def test_third_party_copy_vpd_lists_the_commands(h: Harness) -> None:
    page = await h.ok(inquiry(1, 0x8F))
    assert struct.unpack_from(">HH", page, 4)[0] == 1
    assert bytes((0x84, 2, 0, 3)) in page and bytes((0x83, 1, 0)) in page
    assert (await h.ok(inquiry()))[5] & 0x08  # 3PC


async def test_parameter_list_errors(h: Harness) -> None:
    tgt = target(await naa_of(h))
    p = params([tgt], [segment(0, 0, 8, 0, 100)])
    length_error = (ILLEGAL_REQUEST, *PARAMETER_LIST_LENGTH_ERROR)
    assert await h.sense(xcopy_cdb(16 + 31), p[:47]) == length_error
    assert await h.sense(xcopy_cdb(len(p) - 1), p[:-1]) == length_error
    await h.ok(xcopy_cdb(0))
    many = params([tgt] * (MAX_CSCD_DESCRIPTORS + 1), [segment(0, 0, 8, 0, 100)])
    assert await h.sense(xcopy_cdb(len(many)), many) == (ILLEGAL_REQUEST,
                                                         *TOO_MANY_TARGET_DESCRIPTORS)
    many = params([tgt], [segment(0, 0, 8, 0, 100)] * (MAX_SEGMENT_DESCRIPTORS + 1))
    assert await h.sense(xcopy_cdb(len(many)), many) == (ILLEGAL_REQUEST,
                                                         *TOO_MANY_SEGMENT_DESCRIPTORS)


async def test_descriptor_type_and_field_errors(h: Harness) -> None:
    naa = await naa_of(h)
    seg = segment(0, 0, 8, 0, 100)
    p = params([target(naa, kind=0xE0)], [seg])
    assert await h.sense(xcopy_cdb(len(p)), p) == (ILLEGAL_REQUEST,
                                                   *UNSUPPORTED_TARGET_DESCRIPTOR_TYPE)
    p = params([target(naa)], [segment(0, 0, 8, 0, 100, kind=0x09)])
    assert await h.sense(xcopy_cdb(len(p)), p) == (ILLEGAL_REQUEST,
                                                   *UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE)
    p = params([target(naa, byte1=0xC0)], [seg])  # LU ID TYPE: ignored since SPC-4
    await h.ok(xcopy_cdb(len(p)), p)
    p = params([target(naa, byte1=0x05)], [seg])  # not a block device
    assert await h.sense(xcopy_cdb(len(p)), p) == (ILLEGAL_REQUEST,
                                                   *INVALID_FIELD_IN_PARAM_LIST)


async def test_copy_aborted_cases(h: Harness) -> None:
    naa = await naa_of(h)
    for p in (
        params([target(naa, byte1=0x20)], [segment(0, 0, 8, 0, 100)]),  # NUL device
        params([target(naa)], [segment(0, 1, 8, 0, 100)]),  # no CSCD descriptor 1
        params([target(naa)], [segment(0, 0, 2048, 0, BLOCKS - 1)]),  # past the end
        params([target(b"\x01\x03\x00\x08" + bytes(8))], [segment(0, 0, 8, 0, 100)]),
    ):
        assert (await h.sense(xcopy_cdb(len(p)), p))[0] == COPY_ABORTED
