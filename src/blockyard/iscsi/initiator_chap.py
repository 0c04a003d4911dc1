"""The initiator's side of CHAP, one-way and mutual (RFC 7143 §12.1.3, RFC 1994).

Two steps.  ``answer(keys)`` takes the target's CHAP_A / CHAP_I / CHAP_C
and returns CHAP_N and CHAP_R = MD5(I || secret || C); for mutual CHAP it
adds our own CHAP_I and CHAP_C, drawn from ``secrets`` and never equal to
the target's challenge (a reflected challenge is the attack §12.1.3 warns
of).  ``verify(keys)`` checks the target's final CHAP_N / CHAP_R against
the credentials the target must hold.  Any failure raises ``ChapFailure``.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable

from blockyard.iscsi.chap import (
    CHALLENGE_SIZE,
    CHAP_MD5,
    MAX_CHALLENGE,
    ChapCredentials,
    ChapFailure,
    chap_response,
)
from blockyard.iscsi.textkeys import format_hex, parse_binary, parse_number

Pairs = list[tuple[str, str]]


class ChapInitiator:
    def __init__(self, creds: ChapCredentials, mutual: ChapCredentials | None = None,
                 token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.creds = creds
        self.mutual = mutual
        self._token_bytes = token_bytes
        self._identifier = 0
        self._challenge = b""

    def answer(self, keys: dict[str, str]) -> Pairs:
        """CHAP_N / CHAP_R (and our challenge for mutual CHAP) for the target's challenge."""
        if keys.get("CHAP_A") != str(CHAP_MD5):
            raise ChapFailure(f"target chose CHAP_A={keys.get('CHAP_A')!r}, we offered MD5 (5)")
        try:
            identifier = parse_number(keys["CHAP_I"])
            challenge = parse_binary(keys["CHAP_C"])
        except (KeyError, ValueError) as exc:
            raise ChapFailure(f"target sent no usable CHAP_I / CHAP_C ({exc})") from None
        if not 0 <= identifier <= 255 or not 0 < len(challenge) <= MAX_CHALLENGE:
            raise ChapFailure("target sent an out-of-range CHAP_I or CHAP_C")
        digest = chap_response(identifier, self.creds.secret_bytes, challenge)
        pairs = [("CHAP_N", self.creds.user), ("CHAP_R", format_hex(digest))]
        if self.mutual is not None:
            self._identifier = self._token_bytes(1)[0]
            self._challenge = self._token_bytes(CHALLENGE_SIZE)
            while self._challenge == challenge:  # never reflect theirs back (§12.1.3)
                self._challenge = self._token_bytes(CHALLENGE_SIZE)
            pairs += [("CHAP_I", str(self._identifier)), ("CHAP_C", format_hex(self._challenge))]
        return pairs

    def verify(self, keys: dict[str, str]) -> None:
        """The target's answer to our challenge (mutual CHAP only)."""
        if self.mutual is None:
            return
        name, response = keys.get("CHAP_N"), keys.get("CHAP_R")
        if name is None or response is None:
            raise ChapFailure("target did not answer our mutual CHAP challenge")
        try:
            got = parse_binary(response)
        except ValueError:
            raise ChapFailure("target sent a malformed CHAP_R") from None
        want = chap_response(self._identifier, self.mutual.secret_bytes, self._challenge)
        ok_name = hmac.compare_digest(name.encode(), self.mutual.user.encode())
        if not (hmac.compare_digest(got, want) and ok_name):
            raise ChapFailure(f"invalid mutual CHAP response from the target (user {name!r})")
