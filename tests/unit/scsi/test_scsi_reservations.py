"""RESERVE(6)/RELEASE(6) and persistent reservations with two (or three) I_T nexuses."""

from __future__ import annotations

import struct

import pytest
from scsi_cdbs import (
    I1,
    I2,
    I3,
    inquiry,
    mode_sense6,
    pr_in,
    pr_out,
    pr_params,
    read10,
    release6,
    report_luns,
    request_sense,
    reserve6,
    tur,
    write10,
)
from scsi_harness import BS, Harness

from blockyard.scsi.sense import (
    ILLEGAL_REQUEST,
    INVALID_FIELD_IN_CDB,
    INVALID_FIELD_IN_PARAM_LIST,
    INVALID_RELEASE_OF_PR,
    PARAMETER_LIST_LENGTH_ERROR,
    REGISTRATIONS_PREEMPTED,
    RESERVATIONS_PREEMPTED,
    RESERVATIONS_RELEASED,
    UNIT_ATTENTION,
)
from blockyard.scsi.task import Nexus, Status, TmfFunction

CONFLICT = Status.RESERVATION_CONFLICT
REGISTER, RESERVE, RELEASE, CLEAR, PREEMPT, PREEMPT_ABORT, REGISTER_IGNORE = range(7)
READ_KEYS, READ_RESERVATION, REPORT_CAPS, READ_FULL = range(4)
WE, EA, WE_RO, EA_RO, WE_AR, EA_AR = 1, 3, 5, 6, 7, 8


async def prout(h: Harness, nexus: Nexus, sa: int, rk: int = 0, sark: int = 0, rtype: int = 0,
                flags: int = 0) -> int:
    return await h.status(pr_out(sa, rtype), pr_params(rk, sark, flags), nexus=nexus)


async def keys(h: Harness, nexus: Nexus = I1) -> tuple[int, list[int]]:
    data = await h.ok(pr_in(READ_KEYS), nexus=nexus)
    gen, length = struct.unpack_from(">II", data)
    return gen, [struct.unpack_from(">Q", data, 8 + 8 * i)[0] for i in range(length // 8)]


async def reservation(h: Harness, nexus: Nexus = I1) -> tuple[int, int] | None:
    data = await h.ok(pr_in(READ_RESERVATION), nexus=nexus)
    if struct.unpack_from(">I", data, 4)[0] == 0:
        return None
    key, scope_type = struct.unpack_from(">Q5xB", data, 8)
    return key, scope_type & 0x0F


# ---- RESERVE(6) ------------------------------------------------------------------
async def test_reserve6_between_two_initiators(h: Harness) -> None:
    await h.ok(reserve6())
    await h.ok(reserve6())
    assert await h.status(reserve6(), nexus=I2) == CONFLICT
    await h.ok(release6(), nexus=I2)  # a no-op for a non-holder
    await h.ok(mode_sense6(0x3F))
    assert await h.status(mode_sense6(0x3F), nexus=I2) == CONFLICT
    assert await h.status(tur(), nexus=I2) == CONFLICT
    for cdb in (inquiry(), request_sense(), report_luns()):
        await h.ok(cdb, nexus=I2)
    await h.ok(release6())
    await h.ok(reserve6(), nexus=I2)
    await h.ok(release6(), nexus=I2)


@pytest.mark.parametrize("how", ["nexus_gone", "lun_reset", "warm", "cold"])
async def test_reserve6_ends_on_loss_and_resets(h: Harness, how: str) -> None:
    await h.ok(reserve6())
    if how == "nexus_gone":
        h.device.nexus_gone(I1)
    else:
        fn = {"lun_reset": TmfFunction.LOGICAL_UNIT_RESET,
              "warm": TmfFunction.TARGET_WARM_RESET,
              "cold": TmfFunction.TARGET_COLD_RESET}[how]
        assert await h.device.task_management(fn, I1, 0) == 0
    await h.clear_ua(I2)
    await h.ok(reserve6(), nexus=I2)


async def test_reserve6_and_persistent_reservations_exclude_each_other(h: Harness) -> None:
    assert await prout(h, I1, REGISTER, sark=5) == 0
    assert await prout(h, I1, RESERVE, rk=5, rtype=WE) == 0
    assert await h.status(reserve6(), nexus=I2) == CONFLICT
    assert await prout(h, I1, RELEASE, rk=5, rtype=WE) == 0
    await h.ok(reserve6(), nexus=I2)
    assert await prout(h, I1, RESERVE, rk=5, rtype=WE) == CONFLICT
    assert await h.status(pr_in(READ_KEYS)) == CONFLICT


# ---- registration -------------------------------------------------------------------
async def test_register_reregister_and_unregister(h: Harness) -> None:
    gen0, _ = await keys(h)
    assert await prout(h, I1, REGISTER_IGNORE, sark=0x1234) == 0
    gen, found = await keys(h)
    assert found == [0x1234] and gen == gen0 + 1
    assert await prout(h, I1, REGISTER, rk=0, sark=0x1235) == CONFLICT
    assert await prout(h, I1, REGISTER, rk=0x1234, sark=0x99) == 0
    assert await prout(h, I2, REGISTER, rk=7, sark=8) == CONFLICT  # not registered, key != 0
    assert await prout(h, I2, REGISTER, sark=0) == 0  # nothing to do
    assert (await keys(h))[0] == gen0 + 2
    assert await prout(h, I1, REGISTER, rk=0x99, sark=0) == 0
    assert (await keys(h))[1] == []


async def test_read_keys_truncated_keeps_additional_length(h: Harness) -> None:
    await prout(h, I1, REGISTER_IGNORE, sark=1)
    await prout(h, I2, REGISTER_IGNORE, sark=2)
    data = await h.ok(pr_in(READ_KEYS, alloc=8))
    assert len(data) == 8 and struct.unpack_from(">I", data, 4)[0] == 16


async def test_parameter_list_checks(h: Harness) -> None:
    bad_len = pr_out(REGISTER, plen=20)
    assert await h.sense(bad_len, pr_params(sark=1)[:20]) == (ILLEGAL_REQUEST,
                                                              *PARAMETER_LIST_LENGTH_ERROR)
    for flags in (0x01, 0x04, 0x08):  # APTPL, ALL_TG_PT, SPEC_I_PT are not supported
        assert await h.sense(pr_out(REGISTER), pr_params(sark=1, flags=flags)) == (
            ILLEGAL_REQUEST, *INVALID_FIELD_IN_PARAM_LIST)
    assert await h.sense(pr_out(7), pr_params()) == (ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
    for sa in range(4, 0x20):
        assert await h.status(pr_in(sa)) == Status.CHECK_CONDITION
    for sa in range(4):
        await h.ok(pr_in(sa))


async def test_report_capabilities(h: Harness) -> None:
    data = await h.ok(pr_in(REPORT_CAPS))
    length, flags, tmv, mask = struct.unpack(">HBBH2x", data)
    assert length == 8 and flags & 0x0D == 0 and tmv & 0x80
    assert mask == 0xEA01 and (tmv >> 4) & 7 <= 5


async def test_reserve_and_release_every_type(h: Harness) -> None:
    await prout(h, I1, REGISTER_IGNORE, sark=42)
    gen = (await keys(h))[0]
    for rtype in (WE, EA, WE_RO, EA_RO, WE_AR, EA_AR):
        assert await prout(h, I1, RESERVE, rk=42, rtype=rtype) == 0
        assert await prout(h, I1, RESERVE, rk=42, rtype=rtype) == 0  # same again
        assert await reservation(h) == (0 if rtype in (WE_AR, EA_AR) else 42, rtype)
        assert await prout(h, I1, RELEASE, rk=42, rtype=rtype) == 0
        assert await reservation(h) is None
    assert (await keys(h))[0] == gen  # RESERVE/RELEASE do not bump PRGENERATION


async def test_reserve_checks(h: Harness) -> None:
    assert await prout(h, I1, RESERVE, rk=1, rtype=WE) == CONFLICT  # not registered
    await prout(h, I1, REGISTER_IGNORE, sark=1)
    assert await prout(h, I1, RESERVE, rk=2, rtype=WE) == CONFLICT  # wrong key
    assert await h.sense(pr_out(RESERVE, rtype=2), pr_params(rk=1)) == (ILLEGAL_REQUEST,
                                                                       *INVALID_FIELD_IN_CDB)
    assert await h.sense(pr_out(RESERVE, rtype=1, scope=1), pr_params(rk=1)) == (
        ILLEGAL_REQUEST, *INVALID_FIELD_IN_CDB)
    await prout(h, I1, RESERVE, rk=1, rtype=WE)
    assert await prout(h, I1, RESERVE, rk=1, rtype=EA) == CONFLICT
    assert await h.sense(pr_out(RELEASE, rtype=EA), pr_params(rk=1)) == (
        ILLEGAL_REQUEST, *INVALID_RELEASE_OF_PR)
    await prout(h, I2, REGISTER_IGNORE, sark=2)
    assert await prout(h, I2, RELEASE, rk=2, rtype=EA) == 0  # not the holder: no-op
    assert await reservation(h) == (1, WE)


# (type, registered I2 can read, write, unregistered I2 can read, write): libiscsi
# test_prout_reserve_access.c, SPC-4 table 62
ACCESS = [
    (EA, 0, 0, 0, 0),
    (WE, 1, 0, 1, 0),
    (EA_RO, 1, 1, 0, 0),
    (WE_RO, 1, 1, 1, 0),
    (EA_AR, 1, 1, 0, 0),
    (WE_AR, 1, 1, 1, 0),
]


async def _can(h: Harness, nexus: Nexus) -> tuple[bool, bool]:
    r = await h.status(read10(1, 1), nexus=nexus)
    w = await h.status(write10(1, 1), bytes(BS), nexus=nexus)
    assert r in (0, CONFLICT) and w in (0, CONFLICT)
    return r == 0, w == 0


@pytest.mark.parametrize(("rtype", "rr", "rw", "ur", "uw"), ACCESS)
async def test_access_matrix(h: Harness, rtype: int, rr: int, rw: int, ur: int,
                             uw: int) -> None:
    await prout(h, I1, REGISTER_IGNORE, sark=11)
    await prout(h, I2, REGISTER_IGNORE, sark=22)
    assert await prout(h, I1, RESERVE, rk=11, rtype=rtype) == 0
    assert await _can(h, I1) == (True, True)
    assert await _can(h, I2) == (bool(rr), bool(rw))
    assert await prout(h, I2, REGISTER, rk=22, sark=0) == 0
    assert await _can(h, I2) == (bool(ur), bool(uw))
    assert await h.status(tur(), nexus=I2) == 0  # TEST UNIT READY never conflicts
    assert await prout(h, I1, RELEASE, rk=11, rtype=rtype) == 0


@pytest.mark.parametrize("rtype", [WE, EA, WE_RO, EA_RO, WE_AR, EA_AR])
async def test_unregistering_the_holder(h: Harness, rtype: int) -> None:
    await prout(h, I1, REGISTER_IGNORE, sark=11)
    await prout(h, I2, REGISTER_IGNORE, sark=22)
    await prout(h, I1, RESERVE, rk=11, rtype=rtype)
    await prout(h, I1, REGISTER, rk=11, sark=0)
    if rtype in (WE_AR, EA_AR):  # every registrant holds it: it stays
        assert await reservation(h) == (0, rtype)
        assert await prout(h, I2, RELEASE, rk=22, rtype=rtype) == 0
    else:
        assert await reservation(h) is None
    if rtype in (WE_RO, EA_RO):
        assert await h.sense(tur(), nexus=I2) == (UNIT_ATTENTION, *RESERVATIONS_RELEASED)


async def test_clear(h: Harness) -> None:
    await prout(h, I1, REGISTER_IGNORE, sark=11)
    await prout(h, I2, REGISTER_IGNORE, sark=22)
    await prout(h, I1, RESERVE, rk=11, rtype=EA)
    gen = (await keys(h))[0]
    assert await prout(h, I2, CLEAR, rk=21) == CONFLICT
    assert await prout(h, I1, CLEAR, rk=11) == 0
    assert await keys(h) == (gen + 1, [])
    assert await reservation(h) is None
    assert await h.sense(tur(), nexus=I2) == (UNIT_ATTENTION, *RESERVATIONS_PREEMPTED)


async def test_preempt_removes_a_registration(h: Harness) -> None:
    await prout(h, I1, REGISTER_IGNORE, sark=11)
    await prout(h, I2, REGISTER_IGNORE, sark=22)
    gen = (await keys(h))[0]
    assert await prout(h, I2, PREEMPT, rk=22, sark=11, rtype=EA) == 0
    assert await keys(h, I2) == (gen + 1, [22])
    assert await h.sense(tur(), nexus=I1) == (UNIT_ATTENTION, *REGISTRATIONS_PREEMPTED)
    assert await prout(h, I2, PREEMPT, rk=22, sark=99, rtype=EA) == CONFLICT
    assert await h.sense(pr_out(PREEMPT, EA), pr_params(22, 0), nexus=I2) == (
        ILLEGAL_REQUEST, *INVALID_FIELD_IN_PARAM_LIST)


async def test_preempt_takes_over_the_reservation(h: Harness) -> None:
    await h.clear_ua(I3)
    for nexus, key in ((I1, 11), (I2, 22), (I3, 33)):
        assert await prout(h, nexus, REGISTER_IGNORE, sark=key) == 0
    await prout(h, I1, RESERVE, rk=11, rtype=WE)
    assert await prout(h, I2, PREEMPT_ABORT, rk=22, sark=11, rtype=EA) == 0
    assert await reservation(h, I2) == (22, EA)
    assert sorted((await keys(h, I2))[1]) == [22, 33]
    assert await h.sense(tur(), nexus=I3) == (UNIT_ATTENTION, *RESERVATIONS_RELEASED)
    assert await _can(h, I3) == (False, False)


async def test_preempt_all_registrants_with_zero_key(h: Harness) -> None:
    await h.clear_ua(I3)
    for nexus, key in ((I1, 11), (I2, 22), (I3, 33)):
        assert await prout(h, nexus, REGISTER_IGNORE, sark=key) == 0
    await prout(h, I1, RESERVE, rk=11, rtype=WE_AR)
    assert await prout(h, I2, PREEMPT, rk=22, sark=0, rtype=WE) == 0
    assert (await keys(h, I2))[1] == [22]
    assert await reservation(h, I2) == (22, WE)
    assert await h.sense(tur(), nexus=I3) == (UNIT_ATTENTION, *REGISTRATIONS_PREEMPTED)


async def test_persistent_reservations_survive_resets_and_nexus_loss(h: Harness) -> None:
    await prout(h, I1, REGISTER_IGNORE, sark=11)
    await prout(h, I1, RESERVE, rk=11, rtype=EA)
    await h.device.task_management(TmfFunction.LOGICAL_UNIT_RESET, I2, 0)
    h.device.nexus_gone(I1)
    await h.clear_ua(I1)
    await h.clear_ua(I2)
    assert await reservation(h) == (11, EA)
    assert await h.status(read10(0, 1), nexus=I2) == CONFLICT


async def test_read_full_status(h: Harness) -> None:
    await prout(h, I1, REGISTER_IGNORE, sark=11)
    await prout(h, I2, REGISTER_IGNORE, sark=22)
    await prout(h, I1, RESERVE, rk=11, rtype=WE)
    data = await h.ok(pr_in(READ_FULL))
    off, found = 8, []
    while off < 8 + struct.unpack_from(">I", data, 4)[0]:
        key, holder, scope_type, port, tid_len = struct.unpack_from(">Q4xBB4xHI", data, off)
        tid = data[off + 24:off + 24 + tid_len]
        assert tid[0] == 0x45 and tid_len % 4 == 0
        name = tid[4:].split(b"\0")[0].decode()
        found.append((key, holder & 1, scope_type, port, name))
        off += 24 + tid_len
    assert found == [(11, 1, WE, 1, I1.initiator_port), (22, 0, 0, 1, I2.initiator_port)]
