"""Large write data received straight into the task's buffer (``PduReader.sink``,
``datapath.place``) and commands answered without a Task (``answer_now``): the
bytes that arrive and the PDUs that go out are those of the ordinary path."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest
from iscsi_sim import Sim
from scsi_standin import StandinDevice, read10, write10

from blockyard.block.raw import RawFile
from blockyard.iscsi.constants import RESERVED_TAG
from blockyard.iscsi.framing import MIN_PLACED, PduReader, encode_pdu_bytes
from blockyard.iscsi.pdu import Pdu
from blockyard.iscsi.pdu_initiator import DataOut, NopOut, ScsiCommandPdu
from blockyard.iscsi.pdu_target import R2T, DataIn, ScsiResponse
from blockyard.scsi.device import ScsiTargetDevice
from blockyard.scsi.disk import DiskUnit
from blockyard.scsi.task import ScsiCommand, ScsiResult

KEYS = {"InitialR2T": "No", "ImmediateData": "Yes", "FirstBurstLength": "131072",
        "MaxBurstLength": "262144", "MaxRecvDataSegmentLength": "262144"}


# ---- the reader ----------------------------------------------------------------------------
class Dest:
    def __init__(self, answer: bool = True) -> None:
        self.calls: list[tuple[type[Pdu], int, int]] = []
        self.buf = bytearray(1 << 20)
        self.answer = answer

    def __call__(self, cls: type[Pdu], fields: tuple[Any, ...], length: int) -> memoryview | None:
        self.calls.append((cls, fields[12], length))
        return memoryview(self.buf)[1000:1000 + length] if self.answer else None


def stream(n: int) -> tuple[bytes, bytes]:
    data = os.urandom(n)
    pdu = DataOut(final=True, itt=7, ttt=9, datasn=0, offset=4096, data=data)
    return data, encode_pdu_bytes(pdu) + encode_pdu_bytes(NopOut(itt=8, cmdsn=3))


@pytest.mark.parametrize("first", [48, 49, 5000])
def test_payload_lands_in_the_sinks_buffer(first: int) -> None:
    data, raw = stream(200_000)
    reader = PduReader(1 << 20)
    dest = reader.sink = Dest()
    reader.feed(raw[:first])
    assert reader.next_pdu() is None
    for pos in range(first, len(raw), 30_000):
        reader.feed(raw[pos:pos + 30_000])
    pdu = reader.next_pdu()
    assert isinstance(pdu, DataOut) and dest.calls == [(DataOut, 4096, len(data))]
    assert isinstance(pdu.data, memoryview) and pdu.data.obj is dest.buf
    assert bytes(pdu.data) == data == bytes(dest.buf[1000:1000 + len(data)])
    assert reader.last_header == raw[:48]
    nop = reader.next_pdu()
    assert isinstance(nop, NopOut) and nop.itt == 8 and reader.next_pdu() is None


def test_refused_small_and_digested_payloads_take_the_normal_path() -> None:
    data, raw = stream(MIN_PLACED - 4)
    for reader, dest in ((PduReader(1 << 20), Dest(answer=False)), (PduReader(1 << 20), Dest())):
        reader.sink = dest
        if not dest.answer:
            data, raw = stream(200_000)
        reader.feed(raw[:100])
        reader.feed(raw[100:])
        pdu = reader.next_pdu()
        assert isinstance(pdu, DataOut) and bytes(pdu.data) == data
        assert pdu.data.obj is not dest.buf  # type: ignore[union-attr]
    reader = PduReader(1 << 20)
    reader.sink = dest = Dest()
    reader.data_digest = True
    _, raw = stream(200_000)
    reader.feed(raw[:100])
    assert reader.next_pdu() is None and dest.calls == []


# ---- the target --------------------------------------------------------------------------
def session(device: Any = None) -> Sim:
    s = Sim(device=device)
    assert s.login(extra=list(KEYS.items())).status == 0
    return s


def trickle(s: Sim, pdu: Pdu, piece: int = 7000) -> list[Pdu]:
    raw = encode_pdu_bytes(pdu)
    for pos in range(0, len(raw), piece):
        s.target.receive_data(raw[pos:pos + piece])
        s.pump()
    return s.recv()


def test_a_large_write_arrives_in_place_and_whole() -> None:
    s = session()
    placed: list[tuple[type[Pdu], bool]] = []

    def sink(*a: Any) -> memoryview | None:
        view = s.target._place(*a)
        placed.append((a[0], view is not None))
        return view
    s.target.reader.sink = sink
    payload = os.urandom(1 << 20)
    itt = s.next_itt()
    cmd = ScsiCommandPdu(write=True, final=False, itt=itt, edtl=len(payload), cmdsn=s.cmdsn,
                         cdb=write10(0, len(payload) // 512).ljust(16, b"\0"),
                         data=payload[:65536])
    s.cmdsn += 1
    assert trickle(s, cmd) == []
    out: list[Pdu] = []
    r2ts = trickle(s, DataOut(final=True, itt=itt, ttt=RESERVED_TAG, datasn=0, offset=65536,
                              data=payload[65536:131072]))
    assert [type(p) for p in r2ts] == [R2T]
    while r2ts:
        r2t = r2ts.pop(0)
        assert isinstance(r2t, R2T)
        out = trickle(s, DataOut(final=True, itt=itt, ttt=r2t.ttt, datasn=0, offset=r2t.offset,
                                 data=payload[r2t.offset:r2t.offset + r2t.length]))
        r2ts += [p for p in out if isinstance(p, R2T)]
        out = [p for p in out if not isinstance(p, R2T)]
    assert [type(p) for p in out] == [ScsiResponse] and out[0].status == 0  # type: ignore
    # the command's 64 KiB, the unsolicited 64 KiB, R2Ts for 256 + 256 + 256 + 128 KiB
    assert placed == [(ScsiCommandPdu, True)] + [(DataOut, True)] * 5
    assert isinstance(s.device, StandinDevice)
    assert bytes(s.device.disk[:len(payload)]) == payload


def test_a_bad_offset_is_not_placed_and_fails_as_before() -> None:
    s = session()
    placed: list[memoryview | None] = []
    s.target.reader.sink = lambda *a: placed.append(s.target._place(*a))  # type: ignore
    itt, out = s.command(write10(0, 512), write=bytes(1 << 18), immediate_data=0, final=False)
    assert out == []
    out = trickle(s, DataOut(final=True, itt=itt, datasn=0, offset=4096, data=bytes(131072)))
    assert placed == [None]
    assert [type(p) for p in out] == [ScsiResponse] and out[0].status == 2  # type: ignore


# ---- answered at once ---------------------------------------------------------------------
def script(s: Sim) -> list[bytes]:
    """Commands of every kind; the raw bytes the target sent for each."""
    rnd = random.Random(2)
    out = []
    cdbs: list[tuple[bytes, int, bytes | None]] = [
        (bytes(6), 0, None), (bytes(6), 0, None),  # TEST UNIT READY: POWER ON, then GOOD
        (read10(8, 8), 4096, None), (write10(8, 8), 0, rnd.randbytes(4096)),
        (read10(8, 8), 4096, None),
        (read10(2040, 16), 8192, None),  # past the end: CHECK CONDITION
        (read10(0, 8), 2048, None),  # EDTL smaller than the CDB: overflow residual
        (write10(0, 8), 0, rnd.randbytes(2048)),  # fewer bytes than the CDB: overflow
        (read10(0, 128), 65536, None),  # more than the initiator's MaxRecvDataSegmentLength
    ]
    for cdb, read, write in cdbs:
        s.target.receive_data(encode_pdu_bytes(ScsiCommandPdu(
            read=bool(read), write=write is not None, itt=s.next_itt(), cmdsn=s.cmdsn,
            edtl=read or len(write or b""), cdb=cdb.ljust(16, b"\0"), data=write or b"")))
        s.cmdsn += 1
        s.pump()
        out.append(b"".join(bytes(b) for b in s.target.data_to_send()))
    return out


def test_answers_at_once_are_the_task_paths_answers(tmp_path: Path) -> None:
    image = random.Random(1).randbytes(1 << 20)
    runs = []
    for now in (False, True):
        path = tmp_path / f"d{int(now)}.img"
        path.write_bytes(image)
        dev = ScsiTargetDevice({0: DiskUnit(RawFile(path))})
        s = session(dev)
        s.target.params.peer_max_recv_data_segment = 16384  # several Data-In for 64 KiB
        answered: list[ScsiCommand] = []

        def answer(cmd: ScsiCommand, dev: ScsiTargetDevice = dev,
                   answered: list[ScsiCommand] = answered) -> ScsiResult | None:
            answered.append(cmd)
            return dev.answer_now(cmd)
        if now:
            s.target.answer_now = answer
        runs.append(script(s))
        assert len(answered) == (7 if now else 0) and not s.target.tasks
    task_path, now_path = runs
    assert now_path == task_path
    assert any(x[0] & 0x3F == DataIn.OPCODE for x in now_path)
