"""Fuzzing ``receive_data``: whatever the peer sends, the target core answers, rejects or
raises RemoteProtocolError -- never anything else, and never a LocalProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from iscsi_sim import Sim
from test_iscsi_pdu_codec import STRATEGIES

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.framing import encode_pdu_bytes
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

INITIATOR_PDUS = st.one_of(*(STRATEGIES[c] for c in (
    NopOut, ScsiCommandPdu, TaskMgmtRequest, LoginRequest, TextRequest, DataOut, LogoutRequest,
    SnackRequest)))
FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SOAK = settings(max_examples=5000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def feed(sim: Sim, blob: bytes) -> None:
    try:
        sim.target.receive_data(blob)
        sim.pump()
    except RemoteProtocolError:
        return
    sim.recv()


def fuzz_raw_bytes(logged_in: bool, blob: bytes) -> None:
    sim = Sim()
    if logged_in:
        sim.login()
    feed(sim, blob)


def fuzz_pdus(pdus: list) -> None:
    sim = Sim()
    sim.login()
    for pdu in pdus:
        try:
            sim.target.receive_data(encode_pdu_bytes(pdu))
            sim.pump()
        except RemoteProtocolError:
            return
        sim.recv()


@FAST
@given(st.booleans(), st.binary(max_size=2000))
def test_fuzz_raw_bytes(logged_in: bool, blob: bytes) -> None:
    fuzz_raw_bytes(logged_in, blob)


@FAST
@given(st.lists(INITIATOR_PDUS, max_size=8))
def test_fuzz_well_formed_pdus(pdus: list) -> None:
    fuzz_pdus(pdus)


@pytest.mark.soak
@SOAK
@given(st.booleans(), st.binary(max_size=20000))
def test_soak_raw_bytes(logged_in: bool, blob: bytes) -> None:
    fuzz_raw_bytes(logged_in, blob)


@pytest.mark.soak
@SOAK
@given(st.lists(INITIATOR_PDUS, max_size=40))
def test_soak_well_formed_pdus(pdus: list) -> None:
    fuzz_pdus(pdus)
