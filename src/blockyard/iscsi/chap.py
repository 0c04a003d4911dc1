"""CHAP with MD5, one-way and mutual (RFC 7143 §12.1.3, RFC 1994).

Target side, as a table-driven state machine::

    WAIT_ALGORITHM --CHAP_A (list containing 5)--> WAIT_RESPONSE
        answer: CHAP_A=5, CHAP_I=<id>, CHAP_C=0x<16 random bytes from secrets>
    WAIT_RESPONSE --CHAP_N + CHAP_R [+ CHAP_I + CHAP_C]--> DONE
        checks: CHAP_N is the configured user; CHAP_R == MD5(id || secret || challenge);
        mutual: the initiator's challenge differs from ours (a reflected challenge is an
        attack, §12.1.3), the target has credentials to answer with; then
        answer: CHAP_N=<target user>, CHAP_R=MD5(I || target secret || C)
    any failure --> FAILED (login status 0x0201, authentication failure)

The initiator side is one function (``chap_response``) plus parsing; the
integrated initiator will build on it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from blockyard.iscsi.textkeys import format_hex, parse_binary, parse_number

CHAP_MD5 = 5  # RFC 1994 algorithm number
CHALLENGE_SIZE = 16
MAX_CHALLENGE = 1024  # §12.1.3: CHAP_C is at most 1024 bytes


class ChapFailure(Exception):
    """Authentication failed; the login answers 0x0201."""


@dataclass(frozen=True, slots=True)
class ChapCredentials:
    user: str
    secret: str

    @property
    def secret_bytes(self) -> bytes:
        return self.secret.encode("utf-8")


def chap_response(identifier: int, secret: bytes, challenge: bytes) -> bytes:
    """RFC 1994 §4.1: MD5 over the identifier byte, the secret and the challenge."""
    return hashlib.md5(bytes([identifier & 0xFF]) + secret + challenge,
                       usedforsecurity=True).digest()


class ChapState(Enum):
    WAIT_ALGORITHM = "wait-algorithm"
    WAIT_RESPONSE = "wait-response"
    DONE = "done"
    FAILED = "failed"


Pairs = list[tuple[str, str]]


class ChapTarget:
    """The target's side of one CHAP exchange; see the module docstring."""

    def __init__(self, expected: ChapCredentials, mutual: ChapCredentials | None = None,
                 token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.expected = expected
        self.mutual = mutual
        self.state = ChapState.WAIT_ALGORITHM
        self._token_bytes = token_bytes
        self._identifier = 0
        self._challenge = b""

    def step(self, keys: dict[str, str]) -> Pairs:
        """Consume the CHAP_* keys of one login PDU; return the keys to answer."""
        handler = _HANDLERS.get(self.state)
        if handler is None:
            self.state = ChapState.FAILED
            raise ChapFailure(f"CHAP keys in state {self.state.value}")
        try:
            return handler(self, keys)
        except ChapFailure:
            self.state = ChapState.FAILED
            raise
        except ValueError as exc:
            self.state = ChapState.FAILED
            raise ChapFailure(str(exc)) from exc

    def _on_algorithm(self, keys: dict[str, str]) -> Pairs:
        offered = keys.get("CHAP_A")
        if offered is None:
            raise ChapFailure("expected CHAP_A")
        if str(CHAP_MD5) not in offered.split(","):
            raise ChapFailure(f"no supported CHAP algorithm in {offered!r}")
        self._identifier = self._token_bytes(1)[0]
        self._challenge = self._token_bytes(CHALLENGE_SIZE)
        self.state = ChapState.WAIT_RESPONSE
        return [("CHAP_A", str(CHAP_MD5)), ("CHAP_I", str(self._identifier)),
                ("CHAP_C", format_hex(self._challenge))]

    def _on_response(self, keys: dict[str, str]) -> Pairs:
        name, response = keys.get("CHAP_N"), keys.get("CHAP_R")
        if name is None or response is None:
            raise ChapFailure("expected CHAP_N and CHAP_R")
        want = chap_response(self._identifier, self.expected.secret_bytes, self._challenge)
        ok_name = hmac.compare_digest(name.encode(), self.expected.user.encode())
        if not (hmac.compare_digest(parse_binary(response), want) and ok_name):
            raise ChapFailure(f"wrong CHAP response for user {name!r}")
        answer: Pairs = []
        if "CHAP_I" in keys or "CHAP_C" in keys:
            answer = self._mutual(keys)
        self.state = ChapState.DONE
        return answer

    def _mutual(self, keys: dict[str, str]) -> Pairs:
        if self.mutual is None:
            raise ChapFailure("initiator asked for mutual CHAP, target has no credentials")
        if "CHAP_I" not in keys or "CHAP_C" not in keys:
            raise ChapFailure("mutual CHAP needs both CHAP_I and CHAP_C")
        identifier = parse_number(keys["CHAP_I"])
        challenge = parse_binary(keys["CHAP_C"])
        if not 0 <= identifier <= 255 or not 0 < len(challenge) <= MAX_CHALLENGE:
            raise ChapFailure("bad CHAP_I or CHAP_C")
        if challenge == self._challenge:
            raise ChapFailure("reflected CHAP challenge")  # §12.1.3
        digest = chap_response(identifier, self.mutual.secret_bytes, challenge)
        return [("CHAP_N", self.mutual.user), ("CHAP_R", format_hex(digest))]


_HANDLERS: dict[ChapState, Callable[[ChapTarget, dict[str, str]], Pairs]] = {
    ChapState.WAIT_ALGORITHM: ChapTarget._on_algorithm,
    ChapState.WAIT_RESPONSE: ChapTarget._on_response,
}
