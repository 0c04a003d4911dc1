"""Text-key negotiation, both roles (RFC 7143 §6.2, result functions per key in §13).

``Negotiator.respond`` is the responder: for every offered key it computes
the answer and the result, dispatching on the key's ``Kind`` through
``_RESPONDERS``.  ``resolve`` is the proposer's half: given what we offered
and what came back, the result (or a protocol error when the answer is not
legal for that offer).  A responder and a proposer fed each other's output
agree on every result; the unit tests check exactly that.

Outcomes that are not a value (§6.2): a key nobody knows -> ``NotUnderstood``;
an illegal value, a key from the wrong sender or at the wrong time ->
``Reject``; a key meaningless for a Discovery session -> ``Irrelevant``; the
obsolete marker keys (§13.25) -> ``Reject``.  Declarative keys get no answer.
Keys of kind SPECIAL (names, SessionType, SendTargets, CHAP) are left to the
caller, which sees them in ``special``.
"""

from __future__ import annotations

from collections.abc import Callable

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.constants import LoginStatus
from blockyard.iscsi.keys import (
    ANSWERS,
    IRRELEVANT,
    KEYS,
    NOT_UNDERSTOOD,
    REJECT,
    KeySpec,
    Kind,
    Params,
    Use,
)
from blockyard.iscsi.textkeys import format_boolean, parse_boolean, parse_number

Value = str | int | bool
Outcome = tuple[str | None, Value | None]  # (answer to send or None, result or None)


class Negotiator:
    """Responder for one side of a login or text exchange.

    ``wanted`` holds our preferred values, ``accepted`` the list values we
    support per LIST key, ``params`` receives the results.  ``peer`` is "I"
    when the peer is an initiator (we are a target), else "T".
    """

    def __init__(self, wanted: Params, accepted: dict[str, tuple[str, ...]], params: Params,
                 peer: str = "I") -> None:
        self.wanted = wanted
        self.accepted = accepted
        self.params = params
        self.peer = peer
        self.discovery = False
        self.results: dict[str, Value] = {}

    def respond(self, pairs: list[tuple[str, str]], phase: Use) -> tuple[
            list[tuple[str, str]], list[tuple[str, str]]]:
        """Answers for ``pairs`` and the SPECIAL pairs left to the caller."""
        answers: list[tuple[str, str]] = []
        special: list[tuple[str, str]] = []
        for key, value in pairs:
            spec = KEYS.get(key)
            if spec is not None and spec.kind is Kind.SPECIAL:
                special.append((key, value))
                continue
            answer, result = self.answer(spec, key, value, phase)
            if answer is not None:
                answers.append((key, answer))
            if result is not None and spec is not None:
                self.results[key] = result
                if spec.attr:
                    setattr(self.params, spec.attr, result)
        return answers, special

    def answer(self, spec: KeySpec | None, key: str, value: str, phase: Use) -> Outcome:
        if spec is None:
            return NOT_UNDERSTOOD, None  # §6.2: unknown keys, X- and X# extensions included
        if spec.kind is Kind.OBSOLETE:
            return REJECT, None  # §13.25
        if spec.sender not in ("IT", self.peer) or not _phase_ok(spec.use, phase):
            return REJECT, None
        if value in ANSWERS:
            return REJECT, None  # a proposal cannot be an outcome word
        if self.discovery and not spec.discovery:
            return IRRELEVANT, None
        try:
            return _RESPONDERS[spec.kind](self, spec, value)
        except ValueError:
            return REJECT, None

    # ---- per-kind responders -----------------------------------------------------
    def _list(self, spec: KeySpec, value: str) -> Outcome:
        ours = self.accepted.get(spec.name, spec.values)
        for item in value.split(","):  # values we do not know are simply not chosen
            if item in ours:
                return item, item
        return REJECT, None

    def _boolean(self, spec: KeySpec, value: str) -> Outcome:
        offered = parse_boolean(value)
        mine = bool(getattr(self.wanted, spec.attr or ""))
        result = (offered and mine) if spec.kind is Kind.AND else (offered or mine)
        return format_boolean(result), result

    def _numeric(self, spec: KeySpec, value: str) -> Outcome:
        offered = _in_range(spec, parse_number(value))
        mine = int(getattr(self.wanted, spec.attr or ""))
        result = min(offered, mine) if spec.kind is Kind.MIN else max(offered, mine)
        return str(result), result

    def _declarative(self, spec: KeySpec, value: str) -> Outcome:
        if spec.hi:
            return None, _in_range(spec, parse_number(value))
        return None, value


_RESPONDERS: dict[Kind, Callable[[Negotiator, KeySpec, str], Outcome]] = {
    Kind.LIST: Negotiator._list,
    Kind.AND: Negotiator._boolean,
    Kind.OR: Negotiator._boolean,
    Kind.MIN: Negotiator._numeric,
    Kind.MAX: Negotiator._numeric,
    Kind.DECLARATIVE: Negotiator._declarative,
}


def _phase_ok(use: Use, phase: Use) -> bool:
    if phase is Use.SECURITY:
        return use is not Use.FFP  # operational keys may ride along in the security stage
    if phase is Use.LOGIN:
        return use in (Use.LOGIN, Use.ALL)
    return use in (Use.ALL, Use.FFP)


def _in_range(spec: KeySpec, n: int) -> int:
    if not spec.lo <= n <= spec.hi:
        raise ValueError(f"{spec.name}={n} outside {spec.lo}..{spec.hi}")
    return n


def resolve(key: str, offered: str, answer: str) -> Value | None:
    """The proposer's result for ``key`` given its offer and the peer's answer (§6.2).

    None means the key keeps its default (NotUnderstood, Irrelevant, Reject).
    A value outside what the offer allows is a protocol error.
    """
    spec = KEYS.get(key)
    if answer in ANSWERS or spec is None:
        return None
    bad = RemoteProtocolError(f"illegal answer {key}={answer} to offer {offered}",
                              LoginStatus.INITIATOR_ERROR)
    try:
        if spec.kind is Kind.LIST:
            if answer not in offered.split(","):
                raise bad
            return answer
        if spec.kind in (Kind.AND, Kind.OR):
            mine, theirs = parse_boolean(offered), parse_boolean(answer)
            if spec.kind is Kind.AND:
                return mine and theirs
            return mine or theirs
        if spec.kind in (Kind.MIN, Kind.MAX):
            mine_n, theirs_n = parse_number(offered), _in_range(spec, parse_number(answer))
            if (theirs_n > mine_n) if spec.kind is Kind.MIN else (theirs_n < mine_n):
                raise bad
            return theirs_n
    except ValueError as exc:
        raise bad from exc
    return None


def offer_pairs(wanted: Params, keys: tuple[str, ...]) -> list[tuple[str, str]]:
    """What a proposer sends for ``keys`` given its wanted values (initiator side)."""
    out = []
    for key in keys:
        spec = KEYS[key]
        value = getattr(wanted, spec.attr or "")
        out.append((key, format_boolean(value) if isinstance(value, bool) else str(value)))
    return out
