"""CHAP (RFC 7143 §12.1.3, RFC 1994): the target machine alone and inside a login."""

from __future__ import annotations

import hashlib

import pytest
from iscsi_sim import INITIATOR, TARGET, Sim, portal

from blockyard.iscsi.chap import (
    ChapCredentials,
    ChapFailure,
    ChapState,
    ChapTarget,
    chap_response,
)
from blockyard.iscsi.textkeys import format_hex, parse_binary, parse_text

USER = ChapCredentials("alice", "correct horse battery")
TGT = ChapCredentials("target-user", "target secret 1234")
NAMES = [("InitiatorName", INITIATOR), ("SessionType", "Normal"), ("TargetName", TARGET)]


def fixed_bytes(n: int) -> bytes:
    return bytes(range(7, 7 + n))


def start(mutual: ChapCredentials | None = None) -> tuple[ChapTarget, int, bytes]:
    chap = ChapTarget(USER, mutual, token_bytes=fixed_bytes)
    keys = dict(chap.step({"CHAP_A": "7,5"}))
    assert keys["CHAP_A"] == "5"
    return chap, int(keys["CHAP_I"]), parse_binary(keys["CHAP_C"])


def test_rfc1994_response() -> None:
    assert chap_response(1, b"s", b"c") == hashlib.md5(b"\x01sc").digest()


def test_one_way_success() -> None:
    chap, ident, challenge = start()
    assert (ident, challenge) == (7, fixed_bytes(16))
    answer = chap.step({"CHAP_N": "alice",
                        "CHAP_R": format_hex(chap_response(ident, b"correct horse battery",
                                                           challenge))})
    assert answer == [] and chap.state is ChapState.DONE


def test_mutual_success_answers_with_target_credentials() -> None:
    chap, ident, challenge = start(TGT)
    mine = b"\x99" * 20
    answer = dict(chap.step({
        "CHAP_N": "alice",
        "CHAP_R": format_hex(chap_response(ident, USER.secret_bytes, challenge)),
        "CHAP_I": "42", "CHAP_C": format_hex(mine)}))
    assert answer["CHAP_N"] == "target-user"
    assert parse_binary(answer["CHAP_R"]) == chap_response(42, TGT.secret_bytes, mine)


@pytest.mark.parametrize("case", ["wrong secret", "wrong user", "reflected", "no mutual creds",
                                  "half mutual", "bad identifier"])
def test_failures(case: str) -> None:
    chap, ident, challenge = start(None if case == "no mutual creds" else TGT)
    secret = b"wrong" if case == "wrong secret" else USER.secret_bytes
    keys = {"CHAP_N": "bob" if case == "wrong user" else "alice",
            "CHAP_R": format_hex(chap_response(ident, secret, challenge))}
    if case in ("reflected", "no mutual creds"):
        keys.update(CHAP_I="1", CHAP_C=format_hex(challenge))
    if case == "half mutual":
        keys["CHAP_I"] = "1"
    if case == "bad identifier":
        keys.update(CHAP_I="256", CHAP_C="0x01")
    with pytest.raises(ChapFailure):
        chap.step(keys)
    assert chap.state is ChapState.FAILED


def test_no_md5_in_the_algorithm_list() -> None:
    with pytest.raises(ChapFailure):
        ChapTarget(USER).step({"CHAP_A": "6,7"})


def test_challenges_come_from_secrets() -> None:
    seen = {start_real() for _ in range(5)}
    assert len(seen) == 5


def start_real() -> bytes:
    keys = dict(ChapTarget(USER).step({"CHAP_A": "5"}))
    return parse_binary(keys["CHAP_C"])


# ---- inside a login ----------------------------------------------------------------------
def test_login_one_way_chap() -> None:
    s = Sim(portal(chap=USER))
    rsp = s.login(chap=USER)
    assert rsp.status == 0 and rsp.transit and rsp.tsih


def test_login_mutual_chap_and_transit_after_auth_only() -> None:
    s = Sim(portal(chap=USER, mutual_chap=TGT))
    first = s.login_pdu(NAMES + [("AuthMethod", "CHAP,None")], 0, 1)
    assert dict(parse_text(first.data))["AuthMethod"] == "CHAP"
    assert not first.transit  # the target waits for CHAP to finish (§6.3)
    keys = dict(parse_text(s.login_pdu([("CHAP_A", "5")], 0, 1, transit=False).data))
    mine = b"\x42" * 16
    rsp = s.login_pdu([("CHAP_N", USER.user),
                       ("CHAP_R", format_hex(chap_response(int(keys["CHAP_I"]),
                                                           USER.secret_bytes,
                                                           parse_binary(keys["CHAP_C"])))),
                       ("CHAP_I", "3"), ("CHAP_C", format_hex(mine))], 0, 1)
    got = dict(parse_text(rsp.data))
    assert rsp.status == 0 and rsp.transit and (rsp.csg, rsp.nsg) == (0, 1)
    assert parse_binary(got["CHAP_R"]) == chap_response(3, TGT.secret_bytes, mine)
    final = s.login_pdu([("HeaderDigest", "None")], 1, 3)
    assert final.status == 0 and final.nsg == 3


def test_login_wrong_secret_is_0201() -> None:
    s = Sim(portal(chap=USER))
    rsp = s.login(chap=ChapCredentials("alice", "not the secret"))
    assert rsp.status == 0x0201
    assert s.target.state.value == "closed"


def test_login_reflected_challenge_is_0201() -> None:
    s = Sim(portal(chap=USER, mutual_chap=TGT))
    s.login_pdu(NAMES + [("AuthMethod", "CHAP")], 0, 1)
    keys = dict(parse_text(s.login_pdu([("CHAP_A", "5")], 0, 1, transit=False).data))
    ident, challenge = int(keys["CHAP_I"]), parse_binary(keys["CHAP_C"])
    rsp = s.login_pdu([("CHAP_N", "alice"),
                       ("CHAP_R", format_hex(chap_response(ident, USER.secret_bytes, challenge))),
                       ("CHAP_I", str(ident)), ("CHAP_C", keys["CHAP_C"])], 0, 1)
    assert rsp.status == 0x0201


def test_login_skipping_security_when_chap_is_required_is_0201() -> None:
    s = Sim(portal(chap=USER))
    assert s.login().status == 0x0201


def test_login_offering_only_none_when_chap_is_required_is_0201() -> None:
    s = Sim(portal(chap=USER))
    rsp = s.login_pdu(NAMES + [("AuthMethod", "None")], 0, 1)
    assert rsp.status == 0x0201


def test_login_offering_chap_to_an_open_target_gets_none() -> None:
    s = Sim(portal())
    rsp = s.login_pdu(NAMES + [("AuthMethod", "CHAP,None")], 0, 1)
    assert dict(parse_text(rsp.data))["AuthMethod"] == "None" and rsp.transit
