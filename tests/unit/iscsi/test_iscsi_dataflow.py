"""Data-Out / R2T sequencing, Data-In splitting and phase collapse, residuals (§11.4-11.8)."""

from __future__ import annotations

import pytest
from iscsi_sim import Sim
from scsi_standin import BLOCK, read10, write10

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi import CommandReady
from blockyard.iscsi.constants import RESERVED_TAG
from blockyard.iscsi.pdu_initiator import DataOut
from blockyard.iscsi.pdu_target import R2T, DataIn, Reject, ScsiResponse
from blockyard.scsi.task import ScsiResult, Status

CRC_ERROR = (0x0B, 0x47, 0x05)


def session(**keys: str) -> Sim:
    s = Sim()
    rsp = s.login(extra=list(keys.items()))
    assert rsp.status == 0 and rsp.transit
    return s


def solicited(**extra: str) -> Sim:
    return session(InitialR2T="Yes", ImmediateData="No", **extra)


def sense_of(rsp: ScsiResponse) -> tuple[int, int, int]:
    s = rsp.sense
    return s[2] & 0x0F, s[12], s[13]


def answer_r2t(s: Sim, r2t: R2T, data: bytes, chunk: int, datasns: list[int] | None = None,
               final_at: int | None = None) -> list:
    out, n = [], 0
    pieces = range(r2t.offset, r2t.offset + r2t.length, chunk)
    for i, off in enumerate(pieces):
        end = min(off + chunk, r2t.offset + r2t.length)
        last = i == len(pieces) - 1 if final_at is None else i == final_at
        sn = datasns[i] if datasns else i
        out += s.send(DataOut(final=last, itt=r2t.itt, ttt=r2t.ttt, datasn=sn, offset=off,
                              data=data[off:end]))
        n += 1
    return out


def test_write_through_r2ts_with_outstanding_limit() -> None:
    s = solicited(MaxBurstLength="8192", FirstBurstLength="4096", MaxOutstandingR2T="2")
    payload = bytes(range(256)) * 160  # 40960 bytes = 80 blocks
    itt, out = s.command(write10(4, 80), write=payload, immediate_data=0)
    assert [type(p) for p in out] == [R2T, R2T]
    assert [(r.r2tsn, r.offset, r.length) for r in out] == [(0, 0, 8192), (1, 8192, 8192)]
    assert len({r.ttt for r in out}) == 2 and all(r.statsn == out[0].statsn for r in out)
    pending = list(out)
    r2ts = 2
    while pending:
        r2t = pending.pop(0)
        for pdu in answer_r2t(s, r2t, payload, 4096):
            if isinstance(pdu, R2T):
                pending.append(pdu)
                r2ts += 1
                assert pdu.r2tsn == r2ts - 1
            else:
                assert isinstance(pdu, ScsiResponse) and pdu.status == 0
                assert pdu.exp_datasn == 5 and not pending  # ExpDataSN counts the R2Ts
    assert r2ts == 5
    assert s.device.disk[4 * BLOCK:84 * BLOCK] == payload


def test_unsolicited_then_solicited() -> None:
    s = session(InitialR2T="No", ImmediateData="Yes", FirstBurstLength="8192",
                MaxBurstLength="65536")
    payload = bytes(i % 251 for i in range(20480))
    itt, out = s.command(write10(0, 40), write=payload, immediate_data=4096, final=False)
    assert out == []  # unsolicited Data-Out must follow before any R2T
    out = s.send(DataOut(final=True, itt=itt, datasn=0, offset=4096, data=payload[4096:8192]))
    assert len(out) == 1 and isinstance(out[0], R2T)
    assert (out[0].offset, out[0].length) == (8192, 20480 - 8192)
    done = answer_r2t(s, out[0], payload, 8192)
    assert isinstance(done[-1], ScsiResponse) and done[-1].status == 0
    assert s.device.disk[:20480] == payload


def test_immediate_data_alone_needs_no_r2t() -> None:
    s = session()
    _, out = s.command(write10(9, 2), write=b"q" * 1024)
    assert [type(p) for p in out] == [ScsiResponse] and out[0].status == 0
    assert s.device.disk[9 * BLOCK:11 * BLOCK] == b"q" * 1024


@pytest.mark.parametrize("datasns", [[0, 0], [1, 0], [27], [0xFFFFFFFF]])
def test_bad_datasn_fails_the_write_but_keeps_the_connection(datasns: list[int]) -> None:
    """libiscsi iSCSIdatasn: DataSN 0,0 / 1,0 / 27 / -1 must fail the WRITE."""
    s = solicited(MaxRecvDataSegmentLength="512")
    blocks = len(datasns)
    itt, out = s.command(write10(100, blocks), write=b"w" * (blocks * BLOCK), immediate_data=0)
    r2t = out[0]
    assert isinstance(r2t, R2T)
    got = answer_r2t(s, r2t, b"w" * (blocks * BLOCK), BLOCK, datasns)
    assert len(got) == 1 and isinstance(got[0], ScsiResponse)
    assert got[0].status == Status.CHECK_CONDITION and sense_of(got[0]) == CRC_ERROR
    assert s.device.calls == []  # the command never reached the SCSI layer
    _, out = s.command(bytes(16))  # the connection lives on
    assert out[0].status == 0


def test_unsolicited_bad_datasn_waits_for_the_f_bit() -> None:
    s = session(InitialR2T="No", FirstBurstLength="4096", MaxRecvDataSegmentLength="1024")
    itt, out = s.command(write10(0, 8), write=bytes(4096), immediate_data=0, final=False)
    assert s.send(DataOut(final=False, itt=itt, datasn=1, offset=0, data=bytes(1024))) == []
    assert s.send(DataOut(final=False, itt=itt, datasn=2, offset=1024, data=bytes(1024))) == []
    out = s.send(DataOut(final=True, itt=itt, datasn=3, offset=2048, data=bytes(2048)))
    assert isinstance(out[0], ScsiResponse) and sense_of(out[0]) == CRC_ERROR
    assert s.send(DataOut(final=True, itt=itt, datasn=4, offset=4096, data=b"")) == []


def test_offset_error_and_too_much_data() -> None:
    s = solicited()
    itt, out = s.command(write10(0, 2), write=bytes(1024), immediate_data=0)
    got = s.send(DataOut(final=True, itt=itt, ttt=out[0].ttt, datasn=0, offset=512,
                         data=bytes(512)))
    assert sense_of(got[0]) == (0x0B, 0x4B, 0x05)
    itt, out = s.command(write10(0, 1), write=bytes(512), immediate_data=0)
    got = s.send(DataOut(final=True, itt=itt, ttt=out[0].ttt, datasn=0, offset=0,
                         data=bytes(1024)))
    assert sense_of(got[0]) == (0x0B, 0x4B, 0x02)


def test_early_final_bit_fails_the_task() -> None:
    s = solicited()
    itt, out = s.command(write10(0, 2), write=bytes(1024), immediate_data=0)
    got = s.send(DataOut(final=True, itt=itt, ttt=out[0].ttt, datasn=0, offset=0,
                         data=bytes(512)))
    assert sense_of(got[0]) == CRC_ERROR


def test_unknown_ttt_is_fatal_and_unknown_itt_is_rejected() -> None:
    s = solicited()
    out = s.send(DataOut(itt=0xDEAD, ttt=5, data=bytes(4)))
    assert isinstance(out[0], Reject) and out[0].reason == 0x09
    itt, out = s.command(write10(0, 1), write=bytes(512), immediate_data=0)
    with pytest.raises(RemoteProtocolError):
        s.send(DataOut(itt=itt, ttt=out[0].ttt ^ 1, data=bytes(512)))


@pytest.mark.parametrize(("keys", "kw"), [
    ({"ImmediateData": "No"}, {}),  # immediate data not negotiated
    ({"InitialR2T": "Yes"}, {"final": False}),  # unsolicited Data-Out announced
    ({"FirstBurstLength": "512"}, {}),  # immediate data beyond FirstBurstLength
])
def test_command_level_violations_are_fatal(keys: dict[str, str], kw: dict[str, bool]) -> None:
    s = session(**keys)
    with pytest.raises(RemoteProtocolError):
        s.command(write10(0, 2), write=bytes(1024), **kw)


# ---- Data-In -------------------------------------------------------------------------------
def test_data_in_split_by_mrdsl_and_burst() -> None:
    s = session(MaxRecvDataSegmentLength="4096", MaxBurstLength="8192")
    s.device.disk[:20480] = bytes(i % 253 for i in range(20480))
    _, out = s.command(read10(0, 40), read=20480)
    assert [type(p) for p in out] == [DataIn] * 5
    assert [p.offset for p in out] == [0, 4096, 8192, 12288, 16384]
    assert [p.datasn for p in out] == [0, 1, 2, 3, 4]
    assert [p.final for p in out] == [False, True, False, True, True]  # per MaxBurstLength
    assert [p.status_present for p in out] == [False] * 4 + [True]  # phase collapse
    assert all(p.statsn == 0 for p in out[:4]) and out[4].statsn != 0
    assert b"".join(p.data for p in out) == bytes(s.device.disk[:20480])


def manual(s: Sim, result: ScsiResult, cdb: bytes, **kw: object) -> list:
    s.auto = False
    itt, out = s.command(cdb, **kw)
    assert out == [] and isinstance(s.events[-1], CommandReady)
    s.target.complete_command(itt, result)
    return s.recv()


def test_check_condition_goes_in_a_scsi_response_after_the_data() -> None:
    s = session()
    sense = bytes([0x70, 0, 3, 0, 0, 0, 0, 10] + [0] * 10)
    out = manual(s, ScsiResult(Status.CHECK_CONDITION, data=b"d" * 1000, sense=sense),
                 read10(0, 2), read=1024)
    assert [type(p) for p in out] == [DataIn, ScsiResponse]
    assert not out[0].status_present and out[0].final
    assert out[1].status == 2 and out[1].sense == sense and out[1].data[:2] == b"\0\x12"
    assert out[1].exp_datasn == 1 and out[1].flags == 0x02 and out[1].residual == 24


@pytest.mark.parametrize(("edtl", "produced", "flags", "residual", "sent"), [
    (0, 512, 0x04, 512, 0),  # libiscsi Read10Invalid: EDTL 0 -> overflow
    (10000, 512, 0x02, 9488, 512),  # EDTL too big -> underflow, whole block sent
    (200, 512, 0x04, 312, 200),  # EDTL too small -> only 200 bytes, overflow
    (512, 512, 0, 0, 512),
])
def test_read_residuals(edtl: int, produced: int, flags: int, residual: int, sent: int) -> None:
    s = session()
    out = manual(s, ScsiResult(data=b"r" * produced), read10(0, 1), read=1, edtl=edtl)
    last = out[-1]
    assert (last.residual_flags if isinstance(last, DataIn) else last.flags) == flags
    assert last.residual == residual
    assert sum(len(p.data) for p in out if isinstance(p, DataIn)) == sent


@pytest.mark.parametrize(("edtl", "used", "flags", "residual"), [
    (0, 512, 0x04, 512),  # libiscsi Write10Residuals: EDTL 0 -> overflow
    (10000, 512, 0x02, 9488),
    (200, 512, 0x04, 312),
    (512, 1024, 0x04, 512),  # SCSI TL larger than EDTL
])
def test_write_residuals(edtl: int, used: int, flags: int, residual: int) -> None:
    s = session(FirstBurstLength="65536")
    out = manual(s, ScsiResult(data_out_used=used), write10(0, 1), write=bytes(edtl))
    assert isinstance(out[0], ScsiResponse)
    assert (out[0].flags, out[0].residual) == (flags, residual)


def test_read_flagged_as_write_sends_no_data_in() -> None:
    s = session()
    out = manual(s, ScsiResult(data=b"x" * 512), read10(0, 1), write=bytes(512))
    assert [type(p) for p in out] == [ScsiResponse] and out[0].status == 0


def test_bidirectional_residuals_use_o_and_u() -> None:
    s = session()
    out = manual(s, ScsiResult(data=b"x" * 100, data_out_used=512), bytes(16),
                 write=bytes(512), r=True, bidi_read_length=300)
    assert [type(p) for p in out] == [DataIn, ScsiResponse]
    rsp = out[1]
    assert rsp.flags == 0x08 and rsp.bidi_residual == 200 and rsp.residual == 0


def test_data_in_keeps_the_result_buffer_zero_copy() -> None:
    s = session()
    s.auto = False
    itt, _ = s.command(read10(0, 2), read=1024)
    buf = bytearray(b"z" * 1024)
    s.target.complete_command(itt, ScsiResult(data=memoryview(buf)))
    bufs = s.target.data_to_send()
    assert any(isinstance(b, memoryview) and b.obj is buf for b in bufs)


def test_unsolicited_data_out_for_an_immediate_write() -> None:
    s = session(InitialR2T="No")
    itt, out = s.command(write10(0, 2), write=b"u" * 1024, immediate_data=512, final=False,
                         immediate=True)
    out = s.send(DataOut(final=True, itt=itt, ttt=RESERVED_TAG, datasn=0, offset=512,
                         data=b"u" * 512))
    assert isinstance(out[0], ScsiResponse) and out[0].status == 0


def test_a_write_too_large_to_buffer_is_refused_without_allocating() -> None:
    s = session(InitialR2T="No", FirstBurstLength="4096")
    s.target.portal.max_write = 1 << 20
    itt, out = s.command(write10(0, 4096), write=bytes(4096), edtl=2 << 20, final=False)
    assert out == []  # waits for the end of the unsolicited data
    out = s.send(DataOut(final=True, itt=itt, datasn=0, offset=4096, data=bytes(4)))
    assert isinstance(out[0], ScsiResponse) and sense_of(out[0]) == (0x05, 0x24, 0)
    assert s.device.calls == []
    _, out = s.command(bytes(16))  # CmdSN order goes on past the refused command
    assert out[0].status == 0


def test_too_much_buffered_write_data_is_task_set_full() -> None:
    s = session(InitialR2T="Yes", ImmediateData="No")
    s.target.portal.max_write_buffer = 1 << 20
    first, out = s.command(write10(0, 1536), write=bytes(768 << 10), immediate_data=0)
    assert isinstance(out[0], R2T)  # held: waits for its data
    _, out = s.command(write10(0, 1024), write=bytes(512 << 10), immediate_data=0)
    assert isinstance(out[0], ScsiResponse) and out[0].status == 0x28 and out[0].data == b""
    assert s.target.write_bytes == 768 << 10
