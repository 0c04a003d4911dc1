"""Text keys and the RFC 7143 §6.2 / §13 negotiation rules, both roles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.keys import KEYS, Kind, Params, Use, target_preferences
from blockyard.iscsi.negotiation import Negotiator, offer_pairs, resolve
from blockyard.iscsi.textkeys import (
    TextAccumulator,
    TextFormatError,
    encode_text,
    parse_binary,
    parse_number,
    parse_text,
    split_text,
)


def test_text_round_trip_keeps_order() -> None:
    pairs = [("InitiatorName", "iqn.x:y"), ("HeaderDigest", "None,CRC32C"), ("X-Foo", "")]
    raw = encode_text(pairs)
    assert raw == b"InitiatorName=iqn.x:y\0HeaderDigest=None,CRC32C\0X-Foo=\0"
    assert parse_text(raw) == pairs


@pytest.mark.parametrize("raw", [b"NoNul=1", b"noequals\0", b"bad key=1\0",
                                 b"K" * 64 + b"=1\0", b"Key=\xff\0"])
def test_text_format_errors(raw: bytes) -> None:
    with pytest.raises(TextFormatError):
        parse_text(raw)


def test_numbers_and_binary_values() -> None:
    assert parse_number("8192") == 8192 and parse_number("0x2000") == 8192
    with pytest.raises(ValueError):
        parse_number("-1")
    assert parse_binary("0x0a0B") == b"\x0a\x0b" and parse_binary("0xabc") == b"\x0a\xbc"
    assert parse_binary("0bAAEC") == b"\x00\x01\x02"
    for bad in ("abcd", "0xzz", "0b!!"):
        with pytest.raises(ValueError):
            parse_binary(bad)


def test_continuation_helpers() -> None:
    acc = TextAccumulator(limit=10)
    acc.add(b"A=1")
    acc.add(memoryview(b"\0B=2\0"))
    assert acc.take() == b"A=1\0B=2\0" and not acc.pending
    with pytest.raises(TextFormatError):
        acc.add(b"x" * 11)
    assert split_text(b"x" * 10, 4) == [b"xxxx", b"xxxx", b"xx"]


def responder(discovery: bool = False) -> Negotiator:
    wanted, accepted = target_preferences(max_recv_data_segment=65536,
                                          max_burst_length=262144, first_burst_length=65536)
    neg = Negotiator(wanted, accepted, Params(), peer="I")
    neg.discovery = discovery
    return neg


# The negotiation table: offer -> answer, for every kind of key (§6.2, §13).
TABLE = [
    ("HeaderDigest", "CRC32C,None", "CRC32C"),  # list: first offered value we support
    ("HeaderDigest", "None,CRC32C", "None"),
    ("DataDigest", "Foo,CRC32C", "CRC32C"),  # unknown list values are simply not chosen
    ("DataDigest", "Foo", "Reject"),  # nothing acceptable
    ("InitialR2T", "Yes", "Yes"),  # boolean OR (we want No)
    ("InitialR2T", "No", "No"),
    ("ImmediateData", "No", "No"),  # boolean AND (we want Yes)
    ("ImmediateData", "Yes", "Yes"),
    ("ImmediateData", "Maybe", "Reject"),
    ("MaxBurstLength", "1048576", "262144"),  # numeric minimum
    ("MaxBurstLength", "16384", "16384"),
    ("MaxBurstLength", "100", "Reject"),  # below 512
    ("FirstBurstLength", "0x10000", "65536"),
    ("DefaultTime2Wait", "0", "2"),  # numeric maximum
    ("DefaultTime2Wait", "5", "5"),
    ("DefaultTime2Retain", "20", "0"),
    ("MaxConnections", "4", "1"),
    ("ErrorRecoveryLevel", "2", "0"),
    ("MaxOutstandingR2T", "0", "Reject"),
    ("DataPDUInOrder", "No", "Yes"),
    ("DataSequenceInOrder", "Yes", "Yes"),
    ("TaskReporting", "FastAbort,RFC3720", "RFC3720"),
    ("iSCSIProtocolLevel", "2", "1"),
    ("IFMarker", "No", "Reject"),  # §13.25: obsolete marker keys
    ("OFMarker", "Yes", "Reject"),
    ("IFMarkInt", "2048~8192", "Reject"),
    ("OFMarkInt", "2048", "Reject"),
    ("X-com.example.Foo", "1", "NotUnderstood"),
    ("Unheard", "1", "NotUnderstood"),
    ("TargetAddress", "1.2.3.4", "Reject"),  # only a target may send it
    ("TargetPortalGroupTag", "1", "Reject"),
    ("MaxBurstLength", "Irrelevant", "Reject"),  # an outcome word is no proposal
]


@pytest.mark.parametrize(("key", "offer", "answer"), TABLE)
def test_responder_table(key: str, offer: str, answer: str) -> None:
    answers, special = responder().respond([(key, offer)], Use.LOGIN)
    assert answers == [(key, answer)] and special == []


def test_declarative_keys_get_no_answer_but_are_recorded() -> None:
    neg = responder()
    answers, _ = neg.respond([("MaxRecvDataSegmentLength", "131072"),
                              ("InitiatorAlias", "box"), ("X#NodeArchitecture", "x")],
                             Use.LOGIN)
    assert answers == []
    assert neg.params.peer_max_recv_data_segment == 131072
    assert neg.params.initiator_alias == "box"
    assert neg.respond([("MaxRecvDataSegmentLength", "100")], Use.LOGIN)[0] == [
        ("MaxRecvDataSegmentLength", "Reject")]


def test_irrelevant_in_discovery_sessions() -> None:
    neg = responder(discovery=True)
    answers, _ = neg.respond([("InitialR2T", "No"), ("MaxBurstLength", "512"),
                              ("HeaderDigest", "None")], Use.LOGIN)
    assert answers == [("InitialR2T", "Irrelevant"), ("MaxBurstLength", "Irrelevant"),
                       ("HeaderDigest", "None")]


def test_phase_rules() -> None:
    neg = responder()
    assert neg.respond([("MaxBurstLength", "512")], Use.FFP)[0] == [("MaxBurstLength", "Reject")]
    assert neg.respond([("AuthMethod", "None")], Use.LOGIN)[0] == [("AuthMethod", "Reject")]
    assert neg.respond([("MaxRecvDataSegmentLength", "4096")], Use.FFP) == ([], [])
    _, special = neg.respond([("SendTargets", "All"), ("TargetName", "t")], Use.FFP)
    assert special == [("SendTargets", "All"), ("TargetName", "t")]


def test_results_land_in_params() -> None:
    neg = responder()
    neg.respond([("InitialR2T", "Yes"), ("ImmediateData", "No"), ("MaxBurstLength", "8192"),
                 ("HeaderDigest", "CRC32C")], Use.LOGIN)
    p = neg.params
    assert (p.initial_r2t, p.immediate_data, p.max_burst_length, p.header_digest) == (
        True, False, 8192, "CRC32C")


NEGOTIATED = [k for k, s in KEYS.items() if s.kind in (Kind.AND, Kind.OR, Kind.MIN, Kind.MAX)]


@given(st.sampled_from(NEGOTIATED), st.data())
def test_responder_and_proposer_agree(key: str, data: st.DataObject) -> None:
    spec = KEYS[key]
    if spec.kind in (Kind.AND, Kind.OR):
        offer = data.draw(st.sampled_from(["Yes", "No"]))
    else:
        offer = str(data.draw(st.integers(spec.lo, spec.hi)))
    neg = responder()
    answers, _ = neg.respond([(key, offer)], Use.LOGIN)
    answer = dict(answers)[key]
    assert resolve(key, offer, answer) == neg.results[key]


@given(st.lists(st.sampled_from(["None", "CRC32C", "Bogus"]), min_size=1, max_size=3))
def test_list_answer_is_one_of_the_offer(values: list[str]) -> None:
    offer = ",".join(values)
    answer = dict(responder().respond([("HeaderDigest", offer)], Use.LOGIN)[0])["HeaderDigest"]
    if answer == "Reject":
        assert not {"None", "CRC32C"} & set(values)
    else:
        assert resolve("HeaderDigest", offer, answer) == answer == next(
            v for v in values if v in ("None", "CRC32C"))


@pytest.mark.parametrize(("key", "offer", "answer"), [
    ("MaxBurstLength", "8192", "16384"),  # a minimum cannot grow
    ("DefaultTime2Wait", "5", "2"),  # a maximum cannot shrink
    ("HeaderDigest", "None", "CRC32C"),  # a list answer must be offered
    ("ImmediateData", "Yes", "Perhaps"),
])
def test_proposer_refuses_illegal_answers(key: str, offer: str, answer: str) -> None:
    with pytest.raises(RemoteProtocolError):
        resolve(key, offer, answer)


def test_proposer_outcome_words_keep_defaults() -> None:
    for word in ("Reject", "Irrelevant", "NotUnderstood"):
        assert resolve("MaxBurstLength", "8192", word) is None
    assert resolve("ImmediateData", "No", "Yes") is False  # AND: our No wins
    assert resolve("InitialR2T", "Yes", "No") is True  # OR: our Yes wins


def test_offer_pairs_for_an_initiator() -> None:
    wanted = Params(initial_r2t=False, max_burst_length=1 << 20)
    assert offer_pairs(wanted, ("InitialR2T", "MaxBurstLength", "HeaderDigest")) == [
        ("InitialR2T", "No"), ("MaxBurstLength", "1048576"), ("HeaderDigest", "None")]
