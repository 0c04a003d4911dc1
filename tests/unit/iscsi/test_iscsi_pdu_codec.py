"""The PDU codec: vector tables (fields <-> hex) both ways, and round trips of every PDU."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockyard.iscsi.pdu import DECODERS, decode_header, decode_lun, encode_lun
from blockyard.iscsi.pdu_initiator import (
    DataOut,
    LoginRequest,
    LogoutRequest,
    NopOut,
    ScsiCommandPdu,
    SnackRequest,
    TaskMgmtRequest,
    TextRequest,
)
from blockyard.iscsi.pdu_target import (
    R2T,
    AsyncMessage,
    DataIn,
    LoginResponse,
    LogoutResponse,
    NopIn,
    Reject,
    ScsiResponse,
    TaskMgmtResponse,
    TextResponse,
)


def hexbhs(text: str) -> bytes:
    raw = bytes.fromhex("".join(text.split()))
    assert len(raw) == 48
    return raw


# (PDU, its 48-byte BHS) -- written by hand from the RFC 7143 §11 figures.
VECTORS = [
    (LoginRequest(transit=True, csg=1, nsg=3, isid=0x400001370000, tsih=0, itt=0x11223344,
                  cid=1, cmdsn=7, exp_statsn=9, data=b"12345"),
     hexbhs("43 87 00 00 00 000005 400001370000 0000 11223344 0001 0000 00000007 00000009"
            "00000000 00000000 00000000 00000000")),
    (LoginResponse(transit=True, csg=1, nsg=3, isid=0x400001370000, tsih=0x0102, itt=5,
                   statsn=0x100, exp_cmdsn=7, max_cmdsn=0x86, status=0x0201),
     hexbhs("23 87 00 00 00 000000 400001370000 0102 00000005 00000000 00000100 00000007"
            "00000086 02010000 00000000 00000000")),
    (ScsiCommandPdu(read=True, attr=1, lun=encode_lun(3), itt=0x1234, edtl=4096, cmdsn=8,
                    exp_statsn=2, cdb=bytes.fromhex("28000000001000000800").ljust(16, b"\0")),
     hexbhs("01 c1 00 00 00 000000 0003000000000000 00001234 00001000 00000008 00000002"
            "28000000 00100000 08000000 00000000")),
    (DataIn(final=True, status_present=True, residual_flags=0x02, status=0, itt=9,
            statsn=3, exp_cmdsn=4, max_cmdsn=5, datasn=1, offset=8192, residual=512,
            data=b"\0" * 8),
     hexbhs("25 83 00 00 00 000008 0000000000000000 00000009 ffffffff 00000003 00000004"
            "00000005 00000001 00002000 00000200")),
    (DataOut(final=True, lun=0, itt=9, ttt=0x77, exp_statsn=3, datasn=2, offset=1024),
     hexbhs("05 80 00 00 00 000000 0000000000000000 00000009 00000077 00000000 00000003"
            "00000000 00000002 00000400 00000000")),
    (R2T(itt=9, ttt=0x77, statsn=3, exp_cmdsn=4, max_cmdsn=5, r2tsn=1, offset=65536,
         length=262144),
     hexbhs("31 80 00 00 00 000000 0000000000000000 00000009 00000077 00000003 00000004"
            "00000005 00000001 00010000 00040000")),
    (ScsiResponse(flags=0x04, status=2, itt=9, statsn=3, exp_cmdsn=4, max_cmdsn=5,
                  exp_datasn=2, residual=512, data=b"\0\x12" + bytes(18)),
     hexbhs("21 84 00 02 00 000014 0000000000000000 00000009 00000000 00000003 00000004"
            "00000005 00000002 00000000 00000200")),
    (TaskMgmtRequest(immediate=True, function=1, lun=0, itt=0x20, ref_itt=0x10, cmdsn=5,
                     exp_statsn=6, ref_cmdsn=4),
     hexbhs("42 81 00 00 00 000000 0000000000000000 00000020 00000010 00000005 00000006"
            "00000004 00000000 00000000 00000000")),
    (NopIn(itt=0xFFFFFFFF, ttt=0x55, statsn=3, exp_cmdsn=4, max_cmdsn=5),
     hexbhs("20 80 00 00 00 000000 0000000000000000 ffffffff 00000055 00000003 00000004"
            "00000005 00000000 00000000 00000000")),
    (LogoutResponse(response=0, itt=7, statsn=3, exp_cmdsn=4, max_cmdsn=5, time2wait=2,
                    time2retain=20),
     hexbhs("26 80 00 00 00 000000 0000000000000000 00000007 00000000 00000003 00000004"
            "00000005 00000000 00020014 00000000")),
    (Reject(reason=0x09, statsn=3, exp_cmdsn=4, max_cmdsn=5, data=bytes(48)),
     hexbhs("3f 80 09 00 00 000030 0000000000000000 ffffffff 00000000 00000003 00000004"
            "00000005 00000000 00000000 00000000")),
]


@pytest.mark.parametrize(("pdu", "bhs"), VECTORS, ids=lambda v: type(v).__name__)
def test_vector_encodes(pdu: object, bhs: bytes) -> None:
    assert pdu.encode_header() == bhs  # type: ignore[attr-defined]


@pytest.mark.parametrize(("pdu", "bhs"), VECTORS, ids=lambda v: type(v).__name__)
def test_vector_decodes(pdu: object, bhs: bytes) -> None:
    decoded = decode_header(bhs, 0, b"", pdu.data)  # type: ignore[attr-defined]
    assert decoded == pdu


def test_every_opcode_has_a_class() -> None:
    assert sorted(DECODERS) == [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10,
                                0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3F]


@pytest.mark.parametrize(("lun", "field"), [(0, 0), (5, 0x0005 << 48), (255, 0x00FF << 48),
                                            (256, 0x4100 << 48), (16383, 0x7FFF << 48)])
def test_lun_addressing(lun: int, field: int) -> None:
    assert encode_lun(lun) == field
    assert decode_lun(field) == lun


def test_extended_cdb_travels_in_an_ahs() -> None:
    cdb = bytes(range(32))
    pdu = ScsiCommandPdu(itt=1, cdb=cdb, bidi_read_length=4096)
    header = pdu.encode_header()
    assert header[4] * 4 == len(header) - 48  # TotalAHSLength in words
    back = decode_header(header, 0, header[48:], b"")
    assert isinstance(back, ScsiCommandPdu)
    assert back.cdb == cdb and back.bidi_read_length == 4096


# ---- round trips of every class with random field values ------------------------------
U32 = st.integers(0, 0xFFFFFFFF)
U16 = st.integers(0, 0xFFFF)
U8 = st.integers(0, 0xFF)
LUN = st.integers(0, 16383).map(encode_lun)
DATA = st.binary(max_size=64)

STRATEGIES = {
    NopOut: st.builds(NopOut, st.booleans(), LUN, U32, U32, U32, U32, DATA),
    ScsiCommandPdu: st.builds(
        ScsiCommandPdu, st.booleans(), st.booleans(), st.booleans(), st.booleans(),
        st.integers(0, 7), LUN, U32, U32, U32, U32, st.binary(min_size=16, max_size=16),
        st.none() | U32, DATA),
    TaskMgmtRequest: st.builds(TaskMgmtRequest, st.booleans(), st.integers(1, 127), LUN, U32,
                               U32, U32, U32, U32, U32, DATA),
    LoginRequest: st.builds(LoginRequest, st.booleans(), st.booleans(), st.integers(0, 3),
                            st.integers(0, 3), U8, U8, st.integers(0, (1 << 48) - 1), U16,
                            U32, U16, U32, U32, DATA),
    TextRequest: st.builds(TextRequest, st.booleans(), st.booleans(), st.booleans(), LUN, U32,
                           U32, U32, U32, DATA),
    DataOut: st.builds(DataOut, st.booleans(), LUN, U32, U32, U32, U32, U32, DATA),
    LogoutRequest: st.builds(LogoutRequest, st.booleans(), st.integers(0, 127), U32, U16, U32,
                             U32, DATA),
    SnackRequest: st.builds(SnackRequest, st.integers(0, 15), LUN, U32, U32, U32, U32, U32,
                            DATA),
    NopIn: st.builds(NopIn, LUN, U32, U32, U32, U32, U32, DATA),
    ScsiResponse: st.builds(ScsiResponse, st.sampled_from([0, 2, 4, 8, 0x10, 0x0A]), U8, U8,
                            U32, U32, U32, U32, U32, U32, U32, DATA),
    TaskMgmtResponse: st.builds(TaskMgmtResponse, U8, U32, U32, U32, U32, DATA),
    LoginResponse: st.builds(LoginResponse, st.booleans(), st.booleans(), st.integers(0, 3),
                             st.integers(0, 3), U8, U8, st.integers(0, (1 << 48) - 1), U16,
                             U32, U32, U32, U32, U16, DATA),
    TextResponse: st.builds(TextResponse, st.booleans(), st.booleans(), LUN, U32, U32, U32,
                            U32, U32, DATA),
    DataIn: st.builds(DataIn, st.booleans(), st.booleans(), st.sampled_from([0, 2, 4]),
                      st.booleans(), U8, LUN, U32, U32, U32, U32, U32, U32, U32, U32, DATA),
    LogoutResponse: st.builds(LogoutResponse, U8, U32, U32, U32, U32, U16, U16, DATA),
    R2T: st.builds(R2T, LUN, U32, U32, U32, U32, U32, U32, U32, U32),
    AsyncMessage: st.builds(AsyncMessage, LUN, U32, U32, U32, U32, U8, U8, U16, U16, U16,
                            DATA),
    Reject: st.builds(Reject, U8, U32, U32, U32, U32, U32, DATA),
}


@pytest.mark.parametrize("cls", list(STRATEGIES), ids=lambda c: c.__name__)
def test_round_trip(cls: type) -> None:
    @given(STRATEGIES[cls])
    def check(pdu: object) -> None:
        header = pdu.encode_header()  # type: ignore[attr-defined]
        assert len(header) % 4 == 0 and len(header) >= 48
        back = decode_header(header, 0, header[48:], pdu.data)  # type: ignore[attr-defined]
        assert type(back) is cls
        assert dataclasses.asdict(back) == dataclasses.asdict(pdu)  # type: ignore[call-overload]
    check()
