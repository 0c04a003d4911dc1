"""READ / WRITE / VERIFY / WRITE AND VERIFY / ORWRITE / COMPARE AND WRITE / WRITE ATOMIC."""

from __future__ import annotations

import errno
import struct

import pytest
from scsi_cdbs import (
    caw,
    read6,
    read10,
    read16,
    rw10,
    rw12,
    rw16,
    verify10,
    write6,
    write10,
    write16,
)
from scsi_harness import BLOCKS, BS, Harness, make

from blockyard.block.ram import RamDisk
from blockyard.errors import BlockError
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskOptions, DiskUnit
from blockyard.scsi.sense import (
    DATA_PROTECT,
    HARDWARE_ERROR,
    ILLEGAL_REQUEST,
    INTERNAL_TARGET_FAILURE,
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_CDB_IU,
    LBA_OUT_OF_RANGE,
    MEDIUM_ERROR,
    MISCOMPARE,
    MISCOMPARE_DURING_VERIFY,
    SPACE_ALLOC_FAILED_WRITE_PROTECT,
    UNRECOVERED_READ_ERROR,
    WRITE_ERROR,
    WRITE_PROTECTED,
)
from blockyard.scsi.task import Status

OOB = (ILLEGAL_REQUEST, *LBA_OUT_OF_RANGE)
BAD_CDB = (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * seed + i // BS) & 0xFF for i in range(n * BS))


WRITES = [
    (lambda lba, n: write6(lba, n), lambda lba, n: read6(lba, n)),
    (lambda lba, n: write10(lba, n), lambda lba, n: read10(lba, n)),
    (lambda lba, n: rw12(0xAA, lba, n), lambda lba, n: rw12(0xA8, lba, n)),
    (lambda lba, n: write16(lba, n), lambda lba, n: read16(lba, n)),
]


@pytest.mark.parametrize(("w", "r"), WRITES)
async def test_write_then_read_back(h: Harness, w, r) -> None:
    for lba, n in ((0, 1), (7, 3), (BLOCKS - 4, 4)):
        data = pattern(n, lba + 3)
        await h.ok(w(lba, n), data)
        assert await h.ok(r(lba, n)) == data
        assert bytes(h.ram.data[lba * BS:(lba + n) * BS]) == data


async def test_read6_zero_length_means_256_blocks(h: Harness) -> None:
    assert len(await h.ok(read6(0, 0))) == 256 * BS


@pytest.mark.parametrize("op", [0x28, 0xA8, 0x88, 0x2A, 0xAA, 0x8A, 0x2F])
async def test_beyond_end_of_lun(h: Harness, op: int) -> None:
    build = {0x28: rw10, 0x2A: rw10, 0x2F: rw10, 0xA8: rw12, 0xAA: rw12}.get(op, rw16)
    data = bytes(2 * BS)
    for lba, n in ((BLOCKS - 1, 2), (BLOCKS, 1), (0x80000000, 1), (0xFFFFFFFF, 1),
                   (BLOCKS + 1, 0)):
        assert await h.sense(build(op, lba, n), data) == OOB
    assert await h.sense(rw16(0x88, 2**64 - 1, 1)) == OOB


async def test_zero_blocks_is_good_and_transfers_nothing(h: Harness) -> None:
    assert await h.ok(read10(0, 0)) == b""
    result = await h.run(write10(BLOCKS, 0))
    assert result.status == Status.GOOD and result.data_out_used == 0


@pytest.mark.parametrize("protect", range(1, 8))
async def test_protect_fields_are_invalid_without_pi(h: Harness, protect: int) -> None:
    assert await h.sense(read10(0, 1, protect << 5)) == BAD_CDB
    assert await h.sense(write16(0, 1, protect << 5), bytes(BS)) == BAD_CDB
    assert await h.sense(verify10(0, 1, 0, protect << 5)) == BAD_CDB


async def test_dpo_fua_accepted_and_fua_flushes_through(h: Harness) -> None:
    for flags in (0x10, 0x08, 0x18):
        await h.ok(read10(0, 1, flags))
        await h.ok(write10(0, 1, flags), bytes(BS))
    assert await h.sense(read10(0, 1, 0x04)) == BAD_CDB  # reserved bit


async def test_transfer_length_over_maximum(h: Harness) -> None:
    big = make(blocks=70000)
    await big.clear_ua()
    assert await big.sense(read16(0, 65537)) == BAD_CDB
    assert len(await big.ok(read16(0, 65536))) == 65536 * BS


async def test_write_protected_unit() -> None:
    ro = make(DiskOptions(read_only=True))
    await ro.clear_ua()
    assert await ro.sense(write10(0, 1), bytes(BS)) == (DATA_PROTECT, *WRITE_PROTECTED)
    await ro.ok(read10(0, 1))


async def test_short_data_out_writes_whole_blocks_only(h: Harness) -> None:
    await h.ok(write10(0, 2), b"a" * 2 * BS)
    result = await h.run(write10(0, 2), b"b" * (BS + 100))
    assert result.status == Status.GOOD and result.data_out_used == 2 * BS
    assert await h.ok(read10(0, 2)) == b"b" * BS + b"a" * BS
    result = await h.run(write10(0, 1), b"c" * 200)
    assert result.status == Status.GOOD and result.data_out_used == BS
    assert await h.ok(read10(0, 1)) == b"b" * BS


async def test_long_data_out_writes_what_the_cdb_says(h: Harness) -> None:
    await h.ok(write10(0, 2), b"a" * 2 * BS)
    result = await h.run(write10(0, 1), b"b" * 10000)
    assert result.data_out_used == BS
    assert await h.ok(read10(0, 2)) == b"b" * BS + b"a" * BS


async def test_verify(h: Harness) -> None:
    data = pattern(4)
    await h.ok(write10(10, 4), data)
    await h.ok(verify10(10, 4, 0))
    result = await h.run(verify10(10, 4, 1), data)
    assert result.status == Status.GOOD and result.data_out_used == 4 * BS
    bad = bytearray(data)
    bad[1234] ^= 0x58
    result = await h.run(verify10(10, 4, 1), bytes(bad))
    assert await h.sense(verify10(10, 4, 1), bytes(bad)) == (MISCOMPARE,
                                                              *MISCOMPARE_DURING_VERIFY)
    assert result.sense[0] & 0x80 and struct.unpack_from(">I", result.sense, 3)[0] == 1234
    assert await h.sense(verify10(10, 4, 2)) == BAD_CDB


async def test_verify_bytchk3_compares_one_block_against_each(h: Harness) -> None:
    await h.ok(write10(0, 3), b"x" * 3 * BS)
    result = await h.run(verify10(0, 3, 3), b"x" * BS)
    assert result.status == Status.GOOD and result.data_out_used == BS
    assert (await h.sense(verify10(0, 3, 3), b"y" * BS))[0] == MISCOMPARE


async def test_write_and_verify(h: Harness) -> None:
    data = pattern(3)
    for op, build in ((0x2E, rw10), (0xAE, rw12), (0x8E, rw16)):
        await h.ok(build(op, 5, 3, 0x02), data)
        assert await h.ok(read10(5, 3)) == data
    assert await h.sense(rw10(0x2E, BLOCKS, 1), bytes(BS)) == OOB


async def test_orwrite(h: Harness) -> None:
    await h.ok(write10(0, 2), bytes([0xA5]) * 2 * BS)
    await h.ok(rw16(0x8B, 0, 2), bytes([0x5A]) * 2 * BS)
    assert await h.ok(read10(0, 2)) == b"\xff" * 2 * BS
    assert await h.sense(rw16(0x8B, 0, 1, 0x20), bytes(BS)) == BAD_CDB


async def test_compare_and_write(h: Harness) -> None:
    await h.ok(write10(0, 2), b"A" * 2 * BS)
    await h.ok(caw(0, 2), b"A" * 2 * BS + b"B" * 2 * BS)
    assert await h.ok(read10(0, 2)) == b"B" * 2 * BS
    wrong = bytearray(b"B" * 2 * BS + b"C" * 2 * BS)
    wrong[2 * BS - 27] = ord("x")
    result = await h.run(caw(0, 2), bytes(wrong))
    assert await h.sense(caw(0, 2), bytes(wrong)) == (MISCOMPARE, *MISCOMPARE_DURING_VERIFY)
    assert struct.unpack_from(">I", result.sense, 3)[0] == 2 * BS - 27
    assert await h.ok(read10(0, 2)) == b"B" * 2 * BS


async def test_compare_and_write_checks(h: Harness) -> None:
    await h.ok(caw(0, 0), bytes(BS))  # nothing to compare: GOOD
    assert await h.sense(caw(0, 0), bytes(512 * BS)) == BAD_CDB  # 256 blocks wrapped to 0
    assert await h.sense(caw(0, 1), bytes(4 * BS)) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB_IU)
    assert await h.sense(caw(BLOCKS - 1, 2), bytes(4 * BS)) == OOB
    assert await h.sense(caw(0, 1, 0x20), bytes(2 * BS)) == BAD_CDB


async def test_write_atomic16(h: Harness) -> None:
    cdb = struct.pack(">BBQHHBB", 0x9C, 0x08, 4, 0, 2, 0, 0)
    await h.ok(cdb, b"q" * 2 * BS)
    assert await h.ok(read10(4, 2)) == b"q" * 2 * BS
    await h.ok(struct.pack(">BBQHHBB", 0x9C, 0, 0, 0, 0, 0, 0))
    oob = struct.pack(">BBQHHBB", 0x9C, 0, BLOCKS - 1, 0, 2, 0, 0)
    assert await h.sense(oob, bytes(2 * BS)) == OOB
    boundary = struct.pack(">BBQHHBB", 0x9C, 0, 0, 1, 1, 0, 0)
    assert await h.sense(boundary, bytes(BS)) == BAD_CDB


class Failing(RamDisk):
    """A RAM disk whose reads and writes fail with a chosen errno."""

    def __init__(self, size: int, err: int) -> None:
        super().__init__(size)
        self.err = err

    async def _pread(self, offset: int, length: int) -> bytes:
        raise BlockError(self.err)

    async def _pwrite(self, offset: int, data: object, fua: bool) -> None:
        raise BlockError(self.err)


@pytest.mark.parametrize(("err", "read_sense", "write_sense"), [
    (errno.EIO, (MEDIUM_ERROR, *UNRECOVERED_READ_ERROR), (MEDIUM_ERROR, *WRITE_ERROR)),
    (errno.ENOSPC, None, (DATA_PROTECT, *SPACE_ALLOC_FAILED_WRITE_PROTECT)),
    (errno.EROFS, None, (DATA_PROTECT, *WRITE_PROTECTED)),
    (errno.ENOTSUP, (HARDWARE_ERROR, *INTERNAL_TARGET_FAILURE), None),
])
async def test_layer_errors_become_sense(err: int, read_sense: tuple[int, int, int] | None,
                                         write_sense: tuple[int, int, int] | None) -> None:
    h = Harness(ScsiTargetDevice({0: DiskUnit(Failing(1 << 20, err))}), RamDisk(1))
    await h.clear_ua()
    if read_sense is not None:
        assert await h.sense(read10(0, 1)) == read_sense
    if write_sense is not None:
        assert await h.sense(write10(0, 1), bytes(BS)) == write_sense


async def test_4096_byte_blocks() -> None:
    h = Harness(ScsiTargetDevice({0: DiskUnit(RamDisk(1 << 20), DiskOptions(block_size=4096))}),
                RamDisk(1))
    await h.clear_ua()
    assert struct.unpack(">II", await h.ok(bytes((0x25,)) + bytes(9))) == (255, 4096)
    await h.ok(write10(255, 1), b"k" * 4096)
    assert await h.ok(read10(255, 1)) == b"k" * 4096
    assert await h.sense(read10(256, 1)) == OOB
