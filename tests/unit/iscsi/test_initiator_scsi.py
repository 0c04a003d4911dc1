"""The initiator's SCSI half: CDBs (checked against the target's own decoders), VPD and
capacity parsing, sense decoding (fixed and descriptor), and RemoteLun over a fake
path: splitting at the block limits, FUA emulation, UNMAP / WRITE SAME only where
advertised, GET LBA STATUS extents, unit-attention and BUSY retries, sense in errors."""

from __future__ import annotations

import errno
import struct
from typing import Any

import pytest

from blockyard.block.remote import LunProperties, RemoteLun
from blockyard.errors import BlockError
from blockyard.iscsi import initiator_scsi as scsi
from blockyard.iscsi.initiator_command import Command
from blockyard.scsi.cdb import rw16
from blockyard.scsi.sense import fixed_sense
from blockyard.transport.iscsi_initiator_spare import SpareBuffers

BS = 512
INQ = scsi.Inquiry(0, 0, False, 6, "FAKE", "DISK", "1")


# ---- CDBs and parameter data -------------------------------------------------------------
def test_cdbs_decode_with_the_target_decoders() -> None:
    r = rw16(scsi.write16(0x1_0000_0001, 77, fua=True))
    assert (r.lba, r.blocks, r.fua) == (0x1_0000_0001, 77, True)
    assert scsi.read16(5, 8)[0] == 0x88 and not rw16(scsi.read16(5, 8)).fua
    assert scsi.inquiry(0x83, 1024) == bytes([0x12, 1, 0x83, 4, 0, 0])
    cdb, params = scsi.unmap([(10, 20), (100, 5)])
    assert cdb[0] == 0x42 and struct.unpack_from(">H", cdb, 7)[0] == len(params) == 40
    assert struct.unpack_from(">HH", params) == (38, 32)
    assert struct.unpack_from(">QI", params, 8) == (10, 20)
    assert scsi.write_same16(3, 9, unmap=True)[1] == 0x08
    assert scsi.get_lba_status(7, 24)[1] == 0x12 and len(scsi.read_capacity16()) == 16


def _vpd(page: int, body: bytes) -> bytes:
    return bytes([0, page]) + struct.pack(">H", len(body)) + body


def test_identity_prefers_lu_naa() -> None:
    port_naa = bytes([0x01, 0x13, 0, 8]) + bytes(range(8))  # association 1: the port
    t10 = bytes([0x02, 0x01, 0, 8]) + b"IET 0001"
    naa = bytes([0x01, 0x03, 0, 8]) + bytes.fromhex("6001405abcdef012")
    assert scsi.parse_identity(_vpd(0x83, port_naa + t10 + naa)) == "naa.6001405abcdef012"
    assert scsi.parse_identity(_vpd(0x83, port_naa + t10)) == "t10.IET 0001"


def test_block_limits_provisioning_capacity_lba_status() -> None:
    b0 = bytearray(60)
    struct.pack_into(">IIIIII", b0, 4, 2048, 128, 0, 1 << 20, 64, 8)
    struct.pack_into(">Q", b0, 32, 4096)
    lim = scsi.parse_block_limits(_vpd(0xB0, bytes(b0)))
    assert (lim.max_transfer, lim.optimal_transfer, lim.max_unmap_lbas,
            lim.max_unmap_descriptors, lim.unmap_granularity, lim.max_write_same) == \
        (2048, 128, 1 << 20, 64, 8, 4096)
    prov = scsi.parse_provisioning(_vpd(0xB2, bytes([0, 0xC4, 2, 0])))
    assert prov.lbpu and prov.lbpws and prov.lbprz and prov.provisioning_type == 2
    cap = scsi.parse_capacity16(struct.pack(">QIBBB", 999, 4096, 0, 3, 0xC0).ljust(32, b"\0"))
    assert (cap.blocks, cap.block_size, cap.lbpme, cap.lbprz) == (1000, 4096, True, True)
    lba = struct.pack(">I4x", 36) + struct.pack(">QIB3x", 0, 8, 0) + \
        struct.pack(">QIB3x", 8, 100, 1)
    assert scsi.parse_lba_status(lba) == [(0, 8, 0), (8, 100, 1)]


def test_sense_fixed_and_descriptor() -> None:
    fixed = scsi.decode_sense(fixed_sense(5, 0x21, 0, info=0x1234))
    assert fixed == scsi.Sense(5, 0x21, 0, 0x1234)
    assert str(fixed) == "ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (5/21/00)"
    desc = bytes([0x72, 3, 0x11, 0, 0, 0, 0, 12, 0, 10, 0x80, 0]) + (0xABC).to_bytes(8, "big")
    assert scsi.decode_sense(desc) == scsi.Sense(3, 0x11, 0, 0xABC)
    assert str(scsi.decode_sense(desc)).startswith("MEDIUM ERROR, UNRECOVERED READ ERROR")
    assert scsi.decode_sense(b"\x00" * 18) is None
    assert scsi.describe_status(0x08, b"") == "BUSY"


# ---- RemoteLun over a fake path --------------------------------------------------------------
class FakePath:
    """A RAM LUN answering the CDBs RemoteLun sends; ``script`` forces outcomes first."""

    display = "iscsi://fake/iqn.x/0"

    def __init__(self, blocks: int = 4096) -> None:
        self.disk = bytearray(blocks * BS)
        self.calls: list[bytes] = []
        self.script: list[tuple[int, bytes]] = []  # (status, sense) answers to give first
        self.short_reads = 0  # > 0: READs transfer only this many bytes (GOOD, underflow)

    async def execute(self, lun: int, cdb: bytes, *, data_out: Any = None, read_len: int = 0,
                      into: memoryview | None = None, timeout: float | None = None) -> Command:
        self.calls.append(bytes(cdb))
        cmd = Command(cdb, lun, data_out, read_len, into)
        cmd.reset()
        if self.script:
            cmd.status, cmd.sense = self.script.pop(0)
            return cmd
        cmd.status = 0
        op, lba, n = cdb[0], int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")
        if op == 0x88:
            assert cmd.buffer is not None
            cmd.buffer[:n * BS] = self.disk[lba * BS:(lba + n) * BS]
            cmd.received = min(n * BS, self.short_reads or n * BS)
        elif op == 0x8A:
            self.disk[lba * BS:(lba + n) * BS] = bytes(data_out)
        elif op == 0x93:
            self.disk[lba * BS:(lba + n) * BS] = bytes(n * BS)
        elif op == 0x9E:
            assert cmd.buffer is not None
            body = struct.pack(">QIB3x", 0, 16, 0) + struct.pack(">QIB3x", 16, 64, 1)
            data = struct.pack(">I4x", len(body) + 4) + body
            cmd.buffer[:len(data)] = data
            cmd.received = len(data)
        return cmd

    async def close(self) -> None:
        pass

    def ops(self) -> list[int]:
        return [c[0] for c in self.calls]


def lun(path: FakePath, **kw: Any) -> RemoteLun:
    props = LunProperties(len(path.disk) // BS, BS, INQ, identity="naa.1", **kw)
    return RemoteLun(path, 0, props)


async def test_requests_split_at_max_transfer() -> None:
    path = FakePath()
    remote = lun(path, limits=scsi.BlockLimits(max_transfer=256))
    data = bytes(range(256)) * 4096  # 1 MiB
    await remote.pwrite(0, data)
    assert [rw16(c).blocks for c in path.calls] == [256] * 8
    assert bytes(await remote.pread(0, len(data))) == data


async def test_fua_native_or_emulated() -> None:
    path = FakePath()
    await lun(path, dpofua=True).pwrite(0, bytes(BS), fua=True)
    assert path.ops() == [0x8A] and rw16(path.calls[0]).fua
    path.calls.clear()
    await lun(path).pwrite(0, bytes(BS), fua=True)
    assert path.ops() == [0x8A, 0x91] and not rw16(path.calls[0]).fua


async def test_unmap_and_write_same_only_where_advertised() -> None:
    path = FakePath()
    plain = lun(path)
    assert not plain.can_trim and not plain.can_extents
    await plain.zero(0, 4 * BS, may_trim=True)
    assert path.ops() == [0x8A]  # no WRITE SAME advertised: zeroes written
    path.calls.clear()
    thin = lun(path, lbpme=True, lbprz=True, lba_status=True,
               provisioning=scsi.Provisioning(lbpu=True, lbpws=True, lbprz=True),
               limits=scsi.BlockLimits(max_unmap_lbas=8))
    assert thin.can_trim and thin.can_extents
    await thin.trim(100, 20 * BS)  # whole blocks only: LBA 1..20, in UNMAPs of 8
    assert path.ops() == [0x42] * 3
    path.calls.clear()
    await thin.zero(0, 4 * BS, may_trim=True)
    assert path.ops() == [0x93] and path.calls[0][1] & 0x08  # WRITE SAME with UNMAP
    extents = await thin.extents(0, 80 * BS)
    assert [(e.length // BS, e.flags) for e in extents] == [(16, 0), (64, 3)]


async def test_unit_attention_and_busy_are_retried() -> None:
    path = FakePath()
    remote = lun(path)
    path.script = [(2, fixed_sense(6, 0x29, 0x07)), (8, b""), (0x28, b"")]
    await remote.pwrite(0, bytes(BS))
    assert path.ops() == [0x8A] * 4


async def test_check_condition_message_and_errno() -> None:
    path = FakePath()
    remote = lun(path)
    path.script = [(2, fixed_sense(7, 0x27, 0x07))]
    with pytest.raises(BlockError) as info:
        await remote.pwrite(BS, bytes(BS))
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == ("iscsi://fake/iqn.x/0: WRITE(16) at LBA 1: CHECK CONDITION: "
                               "DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT (7/27/07)")
    path.script = [(2, fixed_sense(5, 0x20, 0))]  # SYNCHRONIZE CACHE(16) unknown: use (10)
    await remote.flush()
    assert path.ops()[-2:] == [0x91, 0x35]


async def test_read_retried_once_per_answer_and_error_names_the_lba() -> None:
    path = FakePath()
    remote = lun(path)
    path.disk[:BS] = b"\x5a" * BS
    path.script = [(2, fixed_sense(6, 0x29, 0x07))]
    assert bytes(await remote.pread(0, BS)) == b"\x5a" * BS
    assert path.ops() == [0x88, 0x88]  # the unit attention, then the read again
    path.script = [(2, fixed_sense(3, 0x11, 0))]
    with pytest.raises(BlockError) as info:
        await remote.pread(2 * BS, BS)
    assert info.value.errno == errno.EIO and "READ(16) at LBA 2" in str(info.value)
    assert path.ops() == [0x88] * 3  # a medium error is not retried


def test_spare_buffers_recycled_only_when_nobody_holds_them() -> None:
    spare = SpareBuffers()
    size = 128 << 10
    first = spare.take(size)
    held = memoryview(first)[:10]  # a reply still queued, say
    del first
    second = spare.take(size)
    assert second is not held.obj  # in use: not handed out again
    del held
    third = spare.take(size)
    assert third is not second and len(third) == size  # the first one, free again
    assert type(spare.take(4096)) is bytearray  # small reads are not pooled


async def test_short_read_never_shows_old_bytes() -> None:
    path = FakePath()
    remote = lun(path)
    path.disk[:4 * BS] = b"\x11" * (4 * BS)
    view = memoryview(bytearray(b"\xee" * (4 * BS)))
    path.short_reads = 2 * BS
    await remote.readinto(0, view)
    assert bytes(view) == b"\x11" * (2 * BS) + bytes(2 * BS)
    assert bytes(await remote.pread(0, 4 * BS)) == b"\x11" * (2 * BS) + bytes(2 * BS)


async def test_empty_requests_send_nothing() -> None:
    path = FakePath()
    remote = lun(path)
    assert bytes(await remote.pread(0, 0)) == b""
    await remote.pwrite(0, b"")
    assert path.calls == []
