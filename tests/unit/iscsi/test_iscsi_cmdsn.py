"""Serial arithmetic (RFC 1982) and the CmdSN window (RFC 7143 §4.2.2.1)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from iscsi_sim import Sim
from scsi_standin import read10

from blockyard.iscsi import CommandReady
from blockyard.iscsi.cmdsn import CommandWindow
from blockyard.iscsi.serial import in_window, sn_add, sn_diff, sn_gt, sn_le, sn_lt

U32 = st.integers(0, 0xFFFFFFFF)


def test_serial_comparisons_wrap() -> None:
    assert sn_lt(0xFFFFFFFF, 0) and sn_gt(0, 0xFFFFFFFF)
    assert sn_lt(0xFFFFFF00, 0x10) and not sn_lt(0x10, 0xFFFFFF00)
    assert not sn_lt(5, 5) and sn_le(5, 5)
    assert not sn_lt(0, 1 << 31) and not sn_gt(0, 1 << 31)  # undefined: neither
    assert in_window(2, 0xFFFFFFFE, 5) and not in_window(6, 0xFFFFFFFE, 5)


@given(U32, st.integers(-(1 << 31) + 1, (1 << 31) - 1))
def test_serial_add_and_diff(a: int, n: int) -> None:
    b = sn_add(a, n)
    assert sn_diff(a, b) == n
    assert sn_lt(a, b) == (n > 0)


def test_window_in_order_and_early_arrivals() -> None:
    w: CommandWindow[str] = CommandWindow(0xFFFFFFFE, depth=4)
    assert w.max_cmdsn == 1
    assert w.arrive(0xFFFFFFFF, "b") == []  # early: waits for the gap
    assert w.arrive(0, "c") == []
    assert w.arrive(0xFFFFFFFE, "a") == ["a", "b", "c"]
    assert w.exp_cmdsn == 1 and w.max_cmdsn == 4
    assert w.arrive(0, "again") is None  # already received
    assert w.arrive(5, "too high") is None
    assert w.arrive(0xFFFFFFF0, "too low") is None


def test_fill_counts_a_number_without_a_command() -> None:
    w: CommandWindow[str] = CommandWindow(10, depth=8)
    assert w.arrive(12, "late") == []
    assert w.fill(11) == []
    assert w.arrive(10, "first") == ["first", "late"]
    assert w.arrive(11, "aborted") is None  # the filled number is taken


@given(st.permutations(list(range(16))), U32)
def test_any_arrival_order_delivers_in_cmdsn_order(order: list[int], base: int) -> None:
    w: CommandWindow[int] = CommandWindow(base, depth=16)
    got: list[int] = []
    for i in order:
        out = w.arrive(sn_add(base, i), i)
        assert out is not None
        got += out
    assert got == list(range(16)) and w.exp_cmdsn == sn_add(base, 16)


# ---- through the target ---------------------------------------------------------------
def ready() -> Sim:
    s = Sim()
    s.login()
    return s


def test_too_high_is_ignored_then_the_right_one_works() -> None:
    s = ready()
    max_cmdsn = s.cmdsn + 127
    _, out = s.command(bytes(16), cmdsn=max_cmdsn + 1)
    assert out == []  # silently ignored (libiscsi iSCSICmdSnTooHigh)
    s.cmdsn -= 1
    _, out = s.command(bytes(16))
    assert len(out) == 1 and out[0].status == 0 and out[0].exp_cmdsn == s.cmdsn


def test_too_low_is_ignored() -> None:
    s = ready()
    s.command(bytes(16))
    _, out = s.command(bytes(16), cmdsn=s.cmdsn - 1)
    assert out == []
    s.cmdsn -= 1
    _, out = s.command(bytes(16))
    assert out[0].exp_cmdsn == s.cmdsn


def test_commands_run_in_cmdsn_order_after_a_gap() -> None:
    s = ready()
    s.auto = False
    base = s.cmdsn
    s.command(read10(0, 1), read=512, cmdsn=base + 2)
    s.command(read10(1, 1), read=512, cmdsn=base + 1)
    assert not [e for e in s.events if isinstance(e, CommandReady)]
    s.command(read10(2, 1), read=512, cmdsn=base)
    lbas = [e.command.cdb[5] for e in s.events if isinstance(e, CommandReady)]
    assert lbas == [2, 1, 0]  # CmdSN order, not arrival order


def test_immediate_commands_bypass_the_window() -> None:
    s = ready()
    _, out = s.command(bytes(16), immediate=True, cmdsn=s.cmdsn + 1000)
    assert len(out) == 1 and out[0].status == 0
    assert out[0].exp_cmdsn == s.cmdsn  # immediate commands do not consume a CmdSN


def test_max_cmdsn_moves_with_exp_cmdsn() -> None:
    s = ready()
    for _ in range(3):
        _, out = s.command(bytes(16))
        assert out[0].max_cmdsn == out[0].exp_cmdsn + 127
