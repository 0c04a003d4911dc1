"""REPORT SUPPORTED OPERATION CODES (SPC-4 6.35): all commands, one command, timeouts."""

from __future__ import annotations

import struct

from scsi_cdbs import rsoc
from scsi_harness import Harness

from blockyard.scsi.disk import DiskUnit
from blockyard.scsi.sense import ILLEGAL_REQUEST, INVALID_FIELD_IN_CDB

BAD_CDB = (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)


def descriptors(data: bytes, rctd: bool) -> list[tuple[int, int, int, int]]:
    out, off, end = [], 4, 4 + struct.unpack_from(">I", data)[0]
    while off < end:
        op, sa, flags, length = struct.unpack_from(">BxHxBH", data, off)
        out.append((op, sa, flags, length))
        off += 8
        if flags & 0x02:
            assert struct.unpack_from(">H", data, off)[0] == 0x0A
            off += 12
    return out


async def test_all_commands(h: Harness) -> None:
    descs = descriptors(await h.ok(rsoc()), False)
    assert len(descs) == len(list(h.unit.commands))
    ops = {(d[0], d[1] if d[2] & 1 else None) for d in descs}
    assert (0x28, None) in ops and (0x9E, 0x10) in ops and (0x42, None) in ops
    assert all(d[2] & 0x02 == 0 for d in descs)
    assert all(d[1] == 0 for d in descs if not d[2] & 1)  # SERVACTV clear -> SA 0
    timed = descriptors(await h.ok(rsoc(rctd=1)), True)
    assert all(d[2] & 0x02 for d in timed) and len(timed) == len(descs)


async def test_one_command_for_each_listed(h: Harness) -> None:
    for op, sa, flags, length in descriptors(await h.ok(rsoc()), False):
        has_sa = bool(flags & 1)
        good_option, bad_option = (2, 1) if has_sa else (1, 2)
        one = await h.ok(rsoc(good_option, op, sa))
        assert one[1] & 0x07 == 3 and struct.unpack_from(">H", one, 2)[0] == length
        assert one[4] == op and len(one) == 4 + length
        result = await h.run(rsoc(bad_option, op, sa))
        assert result.sense[12:14] == b"\x24\x00" and result.sense[16:18] != b"\x00\x01"


async def test_usage_data_shows_dpo_fua(h: Harness) -> None:
    for op in (0x28, 0x2A, 0x89):
        one = await h.ok(rsoc(1, op))
        assert one[5] & 0x18 == 0x18
    verify = await h.ok(rsoc(1, 0x2F))
    assert verify[5] & 0x10


async def test_unsupported_and_invalid_requests(h: Harness) -> None:
    assert await h.ok(rsoc(1, 0xC0)) == bytes((0, 1, 0, 0))
    assert await h.ok(rsoc(2, 0x9E, 0x1F)) == bytes((0, 1, 0, 0))
    assert await h.sense(rsoc(4)) == BAD_CDB
    timed = await h.ok(rsoc(1, 0x28, rctd=1))
    assert timed[1] & 0x80 and len(timed) == 4 + 10 + 12
    assert len(await h.ok(rsoc(alloc=8))) == 8


def test_every_handler_cites_its_clause() -> None:
    for command in DiskUnit.COMMANDS:
        doc = command.handler.__doc__ or ""
        assert "SPC-4" in doc or "SBC-3" in doc or "SBC-4" in doc or "SPC-2" in doc, command.name
