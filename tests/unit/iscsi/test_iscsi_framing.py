"""Framing: digests (RFC test vector), padding, split streams, corrupt input, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.digest import crc32c, digest_bytes
from blockyard.iscsi.framing import PduReader, PduRejected, encode_pdu, encode_pdu_bytes
from blockyard.iscsi.pdu_initiator import DataOut, NopOut, ScsiCommandPdu
from blockyard.iscsi.pdu_target import DataIn


def test_crc32c_vectors() -> None:
    # RFC 7143 Appendix B.4 (from RFC 3720): 32 bytes of zeros, of 0xff, ascending bytes
    assert digest_bytes(bytes(32)) == bytes.fromhex("aa36918a")
    assert digest_bytes(b"\xff" * 32) == bytes.fromhex("43aba862")
    assert digest_bytes(bytes(range(32))) == bytes.fromhex("4e79dd46")
    assert crc32c(b"12", memoryview(b"34"), bytearray(b"5")) == crc32c(b"12345")


def read_all(reader: PduReader) -> list:
    out = []
    while (pdu := reader.next_pdu()) is not None:
        pdu.data = bytes(pdu.data)
        out.append(pdu)
    return out


@pytest.mark.parametrize(("hd", "dd"), [(False, False), (True, False), (True, True)])
def test_padding_and_digests_round_trip(hd: bool, dd: bool) -> None:
    pdus = [NopOut(itt=1, data=b"abcde"), DataOut(itt=2, datasn=1, data=b"x" * 1023),
            ScsiCommandPdu(itt=3, cdb=bytes(16)), NopOut(itt=4)]
    wire = b"".join(encode_pdu_bytes(p, hd, dd) for p in pdus)
    assert len(wire) % 4 == 0
    reader = PduReader(1 << 16)
    reader.header_digest, reader.data_digest = hd, dd
    reader.feed(wire)
    assert read_all(reader) == pdus


def test_payload_is_never_joined() -> None:
    payload = memoryview(bytearray(100000))
    bufs = encode_pdu(DataIn(itt=1, data=payload))
    assert bufs[1] is payload and len(bufs) == 2  # the caller's buffer itself, not a copy
    odd = memoryview(bytearray(100001))
    bufs = encode_pdu(DataIn(itt=1, data=odd), header_digest=True, data_digest=True)
    assert bufs[1] is odd and bufs[2] == b"\0\0\0" and len(bufs[3]) == 4


@given(st.lists(st.integers(1, 200), min_size=1, max_size=40))
def test_any_split_yields_the_same_pdus(cuts: list[int]) -> None:
    pdus = [NopOut(itt=i, data=b"z" * (i * 7 % 50)) for i in range(1, 8)]
    wire = b"".join(encode_pdu_bytes(p, True, True) for p in pdus)
    reader = PduReader()
    reader.header_digest = reader.data_digest = True
    got, pos = [], 0
    for cut in cuts * 20:
        if pos >= len(wire):
            break
        reader.feed(wire[pos:pos + cut])
        pos += cut
        got += read_all(reader)
    reader.feed(wire[pos:])
    got += read_all(reader)
    assert got == pdus


def test_receiving_through_get_buffer() -> None:
    wire = encode_pdu_bytes(NopOut(itt=9, data=b"hello"))
    reader = PduReader()
    for i in range(len(wire)):
        view = reader.get_buffer(1)
        view[0] = wire[i]
        reader.buffer_updated(1)
    assert read_all(reader) == [NopOut(itt=9, data=b"hello")]


def test_header_digest_error_is_fatal() -> None:
    wire = bytearray(encode_pdu_bytes(NopOut(itt=1), header_digest=True))
    wire[48] ^= 1
    reader = PduReader()
    reader.header_digest = True
    reader.feed(wire)
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_pdu()
    assert info.value.fatal


def test_data_digest_error_is_rejected_and_skipped() -> None:
    bad = bytearray(encode_pdu_bytes(DataOut(itt=1, data=b"abcd"), True, True))
    bad[-1] ^= 0xFF
    good = encode_pdu_bytes(NopOut(itt=2), True, True)
    reader = PduReader()
    reader.header_digest = reader.data_digest = True
    reader.feed(bytes(bad) + good)
    with pytest.raises(PduRejected) as info:
        reader.next_pdu()
    assert info.value.code == 0x02 and not info.value.fatal
    assert isinstance(info.value.pdu, DataOut) and info.value.header[16:20] == b"\0\0\0\1"
    assert read_all(reader) == [NopOut(itt=2)]


def test_unknown_opcode_is_rejected_and_skipped() -> None:
    wire = bytearray(encode_pdu_bytes(NopOut(itt=1, data=b"1234")))
    wire[0] = 0x1C
    reader = PduReader()
    reader.feed(bytes(wire) + encode_pdu_bytes(NopOut(itt=2)))
    with pytest.raises(PduRejected) as info:
        reader.next_pdu()
    assert info.value.code == 0x05
    assert read_all(reader) == [NopOut(itt=2)]


def test_oversized_segment_is_refused_before_it_arrives() -> None:
    header = NopOut(itt=1, data=b"x" * 9000).encode_header()
    reader = PduReader(max_data_segment=8192)
    reader.feed(header)
    with pytest.raises(RemoteProtocolError):
        reader.next_pdu()


def test_views_die_with_the_next_call() -> None:
    reader = PduReader()
    reader.feed(encode_pdu_bytes(NopOut(itt=1, data=b"abcd")) * 2)
    first = reader.next_pdu()
    assert first is not None and bytes(first.data) == b"abcd"
    reader.next_pdu()
    with pytest.raises(ValueError):
        bytes(first.data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_reader_only_raises_protocol_errors(blob: bytes) -> None:
    reader = PduReader(4096)
    reader.header_digest = bool(blob[:1] and blob[0] & 1)
    reader.feed(blob)
    for _ in range(50):
        try:
            if reader.next_pdu() is None:
                break
        except PduRejected:
            continue
        except RemoteProtocolError:
            break
