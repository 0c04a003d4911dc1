"""The initiator's reader: the same PDUs as framing.PduReader for any way the stream is
cut, with Data-In payloads placed straight into their destination when they arrive
in pieces; digest and length errors as in framing."""

from __future__ import annotations

import os
import random

import pytest

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.framing import PduReader, PduRejected, encode_pdu_bytes
from blockyard.iscsi.initiator_reader import InitiatorReader
from blockyard.iscsi.pdu import Pdu
from blockyard.iscsi.pdu_target import DataIn, NopIn, ScsiResponse, TextResponse

PAYLOAD = os.urandom(3 * 65536 + 5)  # odd length: padding after a placed payload


def stream(hd: bool = False, dd: bool = False) -> tuple[bytes, list[Pdu]]:
    pdus: list[Pdu] = [NopIn(itt=1, data=b"ping"), TextResponse(itt=2, data=b"A=B\0")]
    off = 0
    for n, chunk in enumerate((PAYLOAD[:65536], PAYLOAD[65536:])):
        pdus.append(DataIn(final=n == 1, status_present=n == 1, itt=7, datasn=n, offset=off,
                           data=chunk))
        off += len(chunk)
    pdus.append(ScsiResponse(itt=8, status=2, data=b"\0\x02pq"))
    return b"".join(encode_pdu_bytes(p, hd, dd) for p in pdus), pdus


def cut(data: bytes, seed: int) -> list[bytes]:
    rnd, out, pos = random.Random(seed), [], 0
    while pos < len(data):
        n = rnd.choice([1, 3, 47, 48, 52, 4096, 70000])
        out.append(data[pos:pos + n])
        pos += n
    return out


def read_all(reader: InitiatorReader, pieces: list[bytes]) -> list[tuple[Pdu, bytes, bool]]:
    got = []
    for piece in pieces:
        reader.feed(piece)
        while (pdu := reader.next_pdu()) is not None:
            got.append((pdu, bytes(pdu.data), pdu is reader.placed))
    return got


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("hd, dd", [(False, False), (True, False), (True, True)])
def test_same_pdus_however_the_stream_is_cut(seed: int, hd: bool, dd: bool) -> None:
    raw, sent = stream(hd, dd)
    dest = bytearray(len(PAYLOAD))
    placed_calls = []

    def placer(pdu: DataIn, length: int) -> memoryview:
        placed_calls.append((pdu.datasn, length))
        return memoryview(dest)[pdu.offset:pdu.offset + length]

    reader = InitiatorReader(1 << 18, placer)
    reader.header_digest, reader.data_digest = hd, dd
    got = read_all(reader, cut(raw, seed))
    reference = PduReader(1 << 18)
    reference.header_digest, reference.data_digest = hd, dd
    reference.feed(raw)
    want = []
    while (p := reference.next_pdu()) is not None:
        want.append((p.encode_header(), bytes(p.data)))
    assert [(p.encode_header(), d) for p, d, _ in got] == want
    for pdu, data, placed in got:
        if placed:  # its bytes went straight to the destination
            assert bytes(dest[pdu.offset:pdu.offset + len(data)]) == data
    assert not (dd and placed_calls)  # a data digest is checked on the normal path


def test_payload_arriving_in_pieces_is_placed() -> None:
    raw, _ = stream()
    dest = bytearray(len(PAYLOAD))
    reader = InitiatorReader(1 << 18, lambda p, n: memoryview(dest)[p.offset:p.offset + n])
    got = read_all(reader, [raw[i:i + 1000] for i in range(0, len(raw), 1000)])
    assert [placed for _, _, placed in got] == [False, False, True, True, False]
    assert bytes(dest) == PAYLOAD


def test_placer_may_decline() -> None:
    raw, _ = stream()
    reader = InitiatorReader(1 << 18, lambda p, n: None)
    got = read_all(reader, cut(raw, 1))
    assert not any(placed for _, _, placed in got)
    assert b"".join(d for p, d, _ in got if isinstance(p, DataIn)) == PAYLOAD


def test_digest_errors_and_lengths() -> None:
    raw = bytearray(encode_pdu_bytes(NopIn(itt=1, data=b"abcd"), True, True))
    raw[-1] ^= 1  # data digest
    reader = InitiatorReader(8192)
    reader.header_digest = reader.data_digest = True
    reader.feed(raw)
    with pytest.raises(PduRejected, match="data digest"):
        reader.next_pdu()
    raw[50] ^= 1  # header digest
    reader = InitiatorReader(8192)
    reader.header_digest = True
    reader.feed(raw)
    with pytest.raises(RemoteProtocolError, match="header digest"):
        reader.next_pdu()
    reader = InitiatorReader(8192)
    reader.feed(encode_pdu_bytes(NopIn(data=bytes(9000)))[:60])
    with pytest.raises(RemoteProtocolError, match="exceeds MaxRecvDataSegmentLength"):
        reader.next_pdu()
