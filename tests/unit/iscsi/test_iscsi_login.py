"""The login phase (RFC 7143 §6.3, §11.12/11.13): stages, T and C bits, failures,
discovery, session reinstatement."""

from __future__ import annotations

import pytest
from iscsi_sim import INITIATOR, OP_KEYS, TARGET, Sim, portal

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi import LoginComplete, PortalConfig, SessionClosing, TargetPolicy
from blockyard.iscsi.pdu_initiator import LoginRequest, NopOut, TextRequest
from blockyard.iscsi.pdu_target import LoginResponse, TextResponse
from blockyard.iscsi.textkeys import encode_text, parse_text

NAMES = [("InitiatorName", INITIATOR), ("SessionType", "Normal"), ("TargetName", TARGET)]


def test_straight_to_operational_and_full_feature() -> None:
    s = Sim()
    rsp = s.login()
    keys = dict(parse_text(rsp.data))
    assert (rsp.status, rsp.transit, rsp.csg, rsp.nsg) == (0, True, 1, 3)
    assert rsp.tsih != 0 and rsp.isid == s.isid and rsp.statsn == 1000
    assert rsp.exp_cmdsn == s.cmdsn and rsp.max_cmdsn == s.cmdsn + 127
    assert keys["TargetPortalGroupTag"] == "1"  # §13.9: first response of a Normal session
    assert keys["MaxRecvDataSegmentLength"] == "262144"  # declared once
    for key, _ in OP_KEYS:
        if key != "MaxRecvDataSegmentLength":
            assert key in keys  # every negotiable key answered
    event = s.events[0]
    assert isinstance(event, LoginComplete)
    assert event.session.nexus.initiator_port == f"{INITIATOR},i,0x{s.isid:012x}"
    assert event.session.nexus.target_port == f"{TARGET},t,0x0001"
    assert s.target.params.peer_max_recv_data_segment == 65536


def test_security_then_operational_without_auth() -> None:
    s = Sim()
    first = s.login_pdu(NAMES + [("AuthMethod", "None")], 0, 1)
    assert (first.transit, first.csg, first.nsg) == (True, 0, 1)
    final = s.login_pdu(OP_KEYS, 1, 3)
    assert final.transit and final.nsg == 3 and final.statsn == first.statsn + 1


def test_operational_without_transit_keeps_negotiating() -> None:
    s = Sim()
    rsp = s.login_pdu(NAMES + OP_KEYS[:3], 1, 3, transit=False)
    assert not rsp.transit and rsp.status == 0
    assert "MaxRecvDataSegmentLength" in dict(parse_text(rsp.data))
    final = s.login_pdu(OP_KEYS[3:], 1, 3)
    assert final.transit and "MaxRecvDataSegmentLength" not in dict(parse_text(final.data))


def test_continue_bit_collects_a_split_key_list() -> None:
    s = Sim()
    raw = encode_text(NAMES + OP_KEYS)
    req = LoginRequest(transit=False, cont=True, csg=1, nsg=3, isid=s.isid, itt=s.itt,
                       data=raw[:25])
    empty = s.send(req)
    assert len(empty) == 1 and isinstance(empty[0], LoginResponse)
    assert empty[0].status == 0 and empty[0].data == b"" and not empty[0].transit
    req = LoginRequest(transit=True, csg=1, nsg=3, isid=s.isid, itt=s.itt, data=raw[25:])
    rsp = s.send(req)[0]
    assert isinstance(rsp, LoginResponse) and rsp.transit and rsp.status == 0


def test_long_answers_are_sent_in_continued_parts() -> None:
    s = Sim()
    many = [(f"X-blockyard-{i:04d}", "v") for i in range(600)]  # 600 NotUnderstood answers
    rsp = s.login_pdu(NAMES + many, 1, 3)
    parts = [rsp]
    while parts[-1].cont:
        assert len(parts[-1].data) <= 8192 and not parts[-1].transit
        parts.append(s.login_pdu([], 1, 3))
    assert parts[-1].transit and parts[-1].status == 0 and len(parts) > 1
    answers = parse_text(b"".join(p.data for p in parts))
    assert sum(1 for _, v in answers if v == "NotUnderstood") == 600


@pytest.mark.parametrize(("keys", "status"), [
    ([("SessionType", "Normal"), ("TargetName", TARGET)], 0x0207),  # no InitiatorName
    ([("InitiatorName", INITIATOR)], 0x0207),  # Normal session without TargetName
    ([("InitiatorName", INITIATOR), ("TargetName", "iqn.2026-11.org.blockyard:nope")], 0x0203),
    ([("InitiatorName", INITIATOR), ("SessionType", "Boot"), ("TargetName", TARGET)], 0x0209),
    ([("InitiatorName", INITIATOR), ("TargetName", TARGET), ("TargetName", TARGET)], 0x0200),
])
def test_login_failures(keys: list[tuple[str, str]], status: int) -> None:
    s = Sim()
    rsp = s.login_pdu(keys, 1, 3)
    assert rsp.status == status and not rsp.transit
    assert isinstance(s.events[-1], SessionClosing)


def test_acl_refuses_other_initiators() -> None:
    cfg = portal(acl=frozenset({"iqn.2026-11.org.blockyard:allowed"}))
    assert Sim(cfg).login().status == 0x0202
    assert Sim(cfg).login(initiator="iqn.2026-11.org.blockyard:allowed").status == 0


@pytest.mark.parametrize(("kw", "status"), [
    ({"version_min": 1, "version_max": 1}, 0x0205),
    ({"tsih": 9}, 0x020A),  # no such session
    ({"cont": True}, 0x0200),  # T and C together
])
def test_header_failures(kw: dict[str, int], status: int) -> None:
    s = Sim()
    assert s.login_pdu(NAMES, 1, 3, **kw).status == status


@pytest.mark.parametrize(("csg", "nsg"), [(2, 3), (3, 3), (1, 1), (1, 2), (0, 0)])
def test_bad_stage_numbers(csg: int, nsg: int) -> None:
    assert Sim().login_pdu(NAMES, csg, nsg).status == 0x0200


def test_joining_an_existing_session_is_refused() -> None:
    cfg = portal()
    first = Sim(cfg)
    tsih = first.login().tsih
    second = Sim(cfg)
    assert second.login_pdu(NAMES, 1, 3, tsih=tsih).status == 0x0206  # MaxConnections=1


def test_stage_must_not_change_behind_our_back() -> None:
    s = Sim()
    s.login_pdu(NAMES + [("AuthMethod", "None")], 0, 1, transit=False)
    assert s.login_pdu(OP_KEYS, 1, 3).status == 0x0200  # we never agreed to leave stage 0


def test_other_pdus_during_login_are_refused() -> None:
    s = Sim()
    with pytest.raises(RemoteProtocolError):
        s.send(NopOut(itt=5))
    rsp = s.recv()
    assert len(rsp) == 1 and isinstance(rsp[0], LoginResponse)
    assert rsp[0].status == 0x020B and rsp[0].itt == 5  # "invalid during login"
    assert s.target.state.value == "closed"


def test_session_reinstatement_replaces_the_old_owner() -> None:
    cfg = portal()
    old, new = Sim(cfg), Sim(cfg)
    old.login()
    new.isid = old.isid
    new.login()
    done = [e for e in new.events if isinstance(e, LoginComplete)]
    assert done[0].replaced is old.target  # §6.3.5: the transport closes the old one
    other = Sim(cfg)
    other.isid = old.isid + 1
    other.login()
    assert [e for e in other.events if isinstance(e, LoginComplete)][0].replaced is None


# ---- discovery ------------------------------------------------------------------------
def discovery_portal() -> PortalConfig:
    targets = {
        "iqn.2026-11.org.blockyard:a": TargetPolicy("iqn.2026-11.org.blockyard:a"),
        "iqn.2026-11.org.blockyard:b": TargetPolicy("iqn.2026-11.org.blockyard:b",
                                                    acl=frozenset({"iqn.other"})),
        "iqn.2026-11.org.blockyard:c": TargetPolicy("iqn.2026-11.org.blockyard:c",
                                                    acl=frozenset({INITIATOR})),
    }
    return PortalConfig(targets, nop_interval=0)


def discover(s: Sim, value: str) -> list[tuple[str, str]]:
    out = s.send(TextRequest(itt=s.next_itt(), cmdsn=s.cmdsn,
                             data=encode_text([("SendTargets", value)])))
    s.cmdsn += 1
    assert len(out) == 1 and isinstance(out[0], TextResponse) and out[0].final
    return parse_text(out[0].data)


def test_discovery_lists_only_permitted_targets() -> None:
    s = Sim(discovery_portal())
    rsp = s.login_pdu([("InitiatorName", INITIATOR), ("SessionType", "Discovery"),
                       ("InitialR2T", "No"), ("HeaderDigest", "None")], 1, 3)
    keys = dict(parse_text(rsp.data))
    assert rsp.status == 0 and keys["InitialR2T"] == "Irrelevant"
    assert "TargetPortalGroupTag" not in keys
    assert discover(s, "All") == [
        ("TargetName", "iqn.2026-11.org.blockyard:a"), ("TargetAddress", "127.0.0.1:3260,1"),
        ("TargetName", "iqn.2026-11.org.blockyard:c"), ("TargetAddress", "127.0.0.1:3260,1")]
    assert discover(s, "iqn.2026-11.org.blockyard:b") == []
    assert [v for k, v in discover(s, "iqn.2026-11.org.blockyard:c") if k == "TargetName"] == [
        "iqn.2026-11.org.blockyard:c"]


def test_normal_session_send_targets_names_only_its_target() -> None:
    s = Sim()
    s.login()
    assert [v for k, v in discover(s, "All") if k == "TargetName"] == [TARGET]
    assert [v for k, v in discover(s, "") if k == "TargetName"] == [TARGET]


def test_scsi_commands_are_rejected_in_discovery() -> None:
    s = Sim(discovery_portal())
    s.login_pdu([("InitiatorName", INITIATOR), ("SessionType", "Discovery")], 1, 3)
    _, out = s.command(bytes(16))
    assert [type(p).__name__ for p in out] == ["Reject"] and out[0].reason == 0x04
    assert out[0].exp_cmdsn == s.cmdsn  # the rejected command still used its CmdSN
