"""The initiator's login phase (RFC 7143 §6.3, PDUs §11.12 / §11.13).

Theory of operation.  Every Login Request we send is answered by exactly one
Login Response; ``receive`` turns each response into the next request, or
into the outcome (``LoginResult``, ``LoginRedirect``) or raises
``LoginError``.  The state says what the last request asked for::

    state             we sent                         on the answer
    AUTH_METHOD       names + AuthMethod=CHAP,None    CHAP -> send CHAP_A=5
                      (T=0) or AuthMethod=None (T=1)  None -> operational (or transit)
    CHAP_ALGORITHM    CHAP_A=5                        send CHAP_N/CHAP_R (+CHAP_I/C), T=1
    CHAP_RESPONSE     CHAP_N, CHAP_R [CHAP_I, CHAP_C] verify mutual CHAP; operational
    SECURITY_TRANSIT  nothing, T=1 NSG=1              T=1 -> operational
    OPERATIONAL       our offers, T=1 NSG=3           resolve answers; T=1 NSG=3 -> done,
                                                      else answer the target's proposals
    DONE / FAILED     -                               -

Before the table: a non-zero status ends the login -- class 1 is a redirect
carrying TargetAddress (§11.13.5), classes 2 and 3 a ``LoginError`` naming
the status; a response with the C bit is collected and pulled on with empty
requests (§11.12.2); declarations (MaxRecvDataSegmentLength,
TargetPortalGroupTag, TargetAlias, §13.9-§13.12) are recorded in any stage.
Our offers are resolved with ``negotiation.resolve`` (an answer the offer
does not allow is a protocol error); keys the target proposes on its own
are answered through ``negotiation.Negotiator`` in the next request.
Digests take effect once the final response has been received (§13.1).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from blockyard.errors import RemoteProtocolError
from blockyard.iscsi.chap import ChapFailure
from blockyard.iscsi.constants import ISCSI_VERSION, LoginStatus, Stage
from blockyard.iscsi.initiator_chap import ChapInitiator
from blockyard.iscsi.initiator_config import InitiatorSettings, Pairs
from blockyard.iscsi.keys import KEYS, Params, Use
from blockyard.iscsi.negotiation import Negotiator, resolve
from blockyard.iscsi.pdu_initiator import LoginRequest
from blockyard.iscsi.pdu_target import LoginResponse
from blockyard.iscsi.textkeys import (
    TextAccumulator,
    TextFormatError,
    encode_text,
    parse_number,
    parse_text,
)

MAX_ROUNDS = 32  # more login round trips than this is a target that never settles
_DECLARED = ("MaxRecvDataSegmentLength", "TargetPortalGroupTag", "TargetAlias",
             "TargetAddress")
STATUS_TEXT = {
    LoginStatus.AUTHENTICATION_FAILURE: "authentication failure",
    LoginStatus.AUTHORIZATION_FAILURE: "initiator not authorized",
    LoginStatus.NOT_FOUND: "target not found",
    LoginStatus.TARGET_REMOVED: "target removed",
    LoginStatus.UNSUPPORTED_VERSION: "unsupported iSCSI version",
    LoginStatus.TOO_MANY_CONNECTIONS: "too many connections",
    LoginStatus.MISSING_PARAMETER: "missing parameter",
    LoginStatus.CANT_INCLUDE_IN_SESSION: "cannot include in session",
    LoginStatus.SESSION_TYPE_NOT_SUPPORTED: "session type not supported",
    LoginStatus.SESSION_DOES_NOT_EXIST: "session does not exist",
    LoginStatus.INVALID_DURING_LOGIN: "invalid request during login",
    LoginStatus.INITIATOR_ERROR: "initiator error",
    LoginStatus.TARGET_ERROR: "target error",
    LoginStatus.SERVICE_UNAVAILABLE: "service unavailable",
    LoginStatus.OUT_OF_RESOURCES: "target out of resources",
}


class LoginError(Exception):
    """The login failed.  ``status`` is the target's status (None: our own verdict)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def auth(self) -> bool:
        """An authentication failure, reported by the target or found by our CHAP checks."""
        return self.status == LoginStatus.AUTHENTICATION_FAILURE or str(self).startswith("CHAP")


def status_text(status: int) -> str:
    try:
        name = STATUS_TEXT[LoginStatus(status)]
    except (ValueError, KeyError):
        name = "login refused"
    return f"{name} (0x{status:04x})"


@dataclass(slots=True)
class LoginRedirect:
    """Status class 1 (§11.13.5): log in at ``address`` (host:port) instead."""

    address: str
    permanent: bool


@dataclass(slots=True)
class LoginResult:
    params: Params
    tsih: int
    exp_statsn: int
    exp_cmdsn: int
    max_cmdsn: int
    negotiated: dict[str, str] = field(default_factory=dict)


class _S(Enum):
    AUTH_METHOD = "auth-method"
    CHAP_ALGORITHM = "chap-algorithm"
    CHAP_RESPONSE = "chap-response"
    SECURITY_TRANSIT = "security-transit"
    OPERATIONAL = "operational"
    DONE = "done"
    FAILED = "failed"


Outcome = LoginRequest | LoginResult | LoginRedirect


class InitiatorLogin:
    """One connection's login as the initiator; see the module docstring."""

    def __init__(self, settings: InitiatorSettings, isid: int, tsih: int = 0, cid: int = 0,
                 cmdsn: int = 0, itt: int = 0,
                 token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.settings = settings
        self.isid, self.tsih, self.cid, self.cmdsn, self.itt = isid, tsih, cid, cmdsn, itt
        self.params = Params(max_recv_data_segment=settings.max_recv_data_segment)
        self.neg = Negotiator(settings.wanted(), {"HeaderDigest": settings.header_digest,
                                                  "DataDigest": settings.data_digest},
                              self.params, peer="T")
        self.neg.discovery = settings.discovery
        self.chap = ChapInitiator(settings.chap, settings.mutual, token_bytes) \
            if settings.chap is not None else None
        self.state = _S.AUTH_METHOD
        self.stage = Stage.SECURITY
        self.exp_statsn = 0
        self.negotiated: dict[str, str] = {}
        self._offered: dict[str, str] = {}
        self._acc = TextAccumulator()
        self._rounds = 0

    # ---- requests -----------------------------------------------------------------
    def start(self) -> LoginRequest:
        names = self.settings.names()
        if self.chap is not None:
            return self._request(names + [("AuthMethod", "CHAP,None")], transit=False)
        return self._request(names + [("AuthMethod", "None")], transit=True,
                             nsg=Stage.OPERATIONAL)

    def _request(self, pairs: Pairs, transit: bool, nsg: int = 0) -> LoginRequest:
        return LoginRequest(transit=transit, cont=False, csg=self.stage,
                            nsg=nsg if transit else 0, version_max=ISCSI_VERSION,
                            version_min=ISCSI_VERSION, isid=self.isid, tsih=self.tsih,
                            itt=self.itt, cid=self.cid, cmdsn=self.cmdsn,
                            exp_statsn=self.exp_statsn, data=encode_text(pairs))

    def _operational(self) -> LoginRequest:
        self.stage = Stage.OPERATIONAL
        self.state = _S.OPERATIONAL
        offers = self.settings.offers()
        self._offered = dict(offers)
        return self._request(offers, transit=True, nsg=Stage.FULL_FEATURE)

    # ---- responses ----------------------------------------------------------------
    def receive(self, rsp: LoginResponse) -> Outcome:
        """The next request, or the outcome; raises LoginError."""
        try:
            return self._receive(rsp)
        except LoginError:
            self.state = _S.FAILED
            raise
        except ChapFailure as exc:
            self.state = _S.FAILED
            raise LoginError(f"CHAP: {exc}") from None
        except (TextFormatError, RemoteProtocolError, ValueError) as exc:
            self.state = _S.FAILED
            raise LoginError(f"target broke the login protocol: {exc}") from None

    def _receive(self, rsp: LoginResponse) -> Outcome:
        if self.state in (_S.DONE, _S.FAILED):
            raise LoginError(f"login response in state {self.state.value}")
        self._rounds += 1
        if self._rounds > MAX_ROUNDS:
            raise LoginError(f"login did not finish in {MAX_ROUNDS} round trips")
        if rsp.status:
            return self._refused(rsp)
        if rsp.csg != self.stage or (rsp.transit and rsp.cont):
            raise LoginError(f"login response for stage {rsp.csg} in stage {self.stage}")
        self.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF  # §11.13.4
        if rsp.cont:  # §11.12.2: collect, pull the rest with an empty request
            self._acc.add(rsp.data)
            return self._request([], transit=False)
        pairs = parse_text(self._acc.take() + bytes(rsp.data))
        keys = dict(pairs)
        self._declarations(keys)
        return _HANDLERS[self.state](self, rsp, keys)

    def _refused(self, rsp: LoginResponse) -> LoginRedirect:
        if rsp.status >> 8 == 1:  # §11.13.5: redirection
            keys = dict(parse_text(rsp.data))
            address = keys.get("TargetAddress", "")
            if not address:
                raise LoginError("redirected without a TargetAddress", rsp.status)
            self.state = _S.DONE
            return LoginRedirect(address.split(",")[0],
                                 rsp.status == LoginStatus.TARGET_MOVED_PERMANENTLY)
        raise LoginError(status_text(rsp.status), rsp.status)

    def _declarations(self, keys: dict[str, str]) -> None:
        for key in _DECLARED:
            if key in keys:
                self.negotiated[key] = keys[key]
        if "MaxRecvDataSegmentLength" in keys:
            n = parse_number(keys["MaxRecvDataSegmentLength"])
            if not 512 <= n <= (1 << 24) - 1:  # §13.12
                raise LoginError(f"target declared MaxRecvDataSegmentLength={n}")
            self.params.peer_max_recv_data_segment = n

    # ---- per-state handlers --------------------------------------------------------
    def _on_auth_method(self, rsp: LoginResponse, keys: dict[str, str]) -> Outcome:
        offered = "CHAP,None" if self.chap is not None else "None"
        chosen = keys.get("AuthMethod", "None")
        if resolve("AuthMethod", offered, chosen) is None:
            raise LoginError(f"target answered AuthMethod={chosen}")
        self.negotiated["AuthMethod"] = chosen
        if chosen == "CHAP":
            self.state = _S.CHAP_ALGORITHM
            return self._request([("CHAP_A", "5")], transit=False)
        if self.settings.mutual is not None:
            raise LoginError("CHAP: the target would not authenticate itself (AuthMethod=None) "
                             "but mutual CHAP was asked for")
        return self._after_security(rsp)

    def _on_chap_algorithm(self, rsp: LoginResponse, keys: dict[str, str]) -> Outcome:
        assert self.chap is not None
        answer = self.chap.answer(keys)
        self.state = _S.CHAP_RESPONSE
        return self._request(answer, transit=True, nsg=Stage.OPERATIONAL)

    def _on_chap_response(self, rsp: LoginResponse, keys: dict[str, str]) -> Outcome:
        assert self.chap is not None
        self.chap.verify(keys)
        return self._after_security(rsp)

    def _after_security(self, rsp: LoginResponse) -> Outcome:
        if not rsp.transit:
            self.state = _S.SECURITY_TRANSIT
            return self._request([], transit=True, nsg=Stage.OPERATIONAL)
        if rsp.nsg == Stage.FULL_FEATURE:
            return self._done(rsp)  # the target skipped the operational stage: all defaults
        if rsp.nsg != Stage.OPERATIONAL:
            raise LoginError(f"target moved to stage {rsp.nsg}")
        return self._operational()

    def _on_security_transit(self, rsp: LoginResponse, keys: dict[str, str]) -> Outcome:
        return self._after_security(rsp)

    def _on_operational(self, rsp: LoginResponse, keys: dict[str, str]) -> Outcome:
        proposals: Pairs = []
        for key, value in keys.items():
            if key in self._offered:
                self._apply(key, resolve(key, self._offered.pop(key), value), value)
            elif key not in _DECLARED:
                proposals.append((key, value))
        answers, special = self.neg.respond(proposals, Use.LOGIN)
        answers += [(k, "Reject") for k, _ in special]
        for key, result in self.neg.results.items():
            self.negotiated[key] = str(result)
        if rsp.transit:
            if rsp.nsg != Stage.FULL_FEATURE:
                raise LoginError(f"target moved to stage {rsp.nsg}")
            return self._done(rsp)
        return self._request(answers, transit=True, nsg=Stage.FULL_FEATURE)

    def _apply(self, key: str, result: object, answer: str) -> None:
        spec = KEYS[key]
        if result is None or spec.attr is None:
            return  # NotUnderstood / Irrelevant / Reject: the default stands (§6.2)
        setattr(self.params, spec.attr, result)
        self.negotiated[key] = answer if isinstance(result, str) else \
            ("Yes" if result is True else "No" if result is False else str(result))

    def _done(self, rsp: LoginResponse) -> LoginResult:
        if not rsp.tsih and not self.settings.discovery and not self.tsih:
            raise LoginError("final login response without a TSIH")
        self.state = _S.DONE
        p = self.params
        p.first_burst_length = min(p.first_burst_length, p.max_burst_length)  # §13.14
        self.negotiated.setdefault("MaxRecvDataSegmentLength", str(p.peer_max_recv_data_segment))
        self.negotiated.setdefault("HeaderDigest", p.header_digest)
        self.negotiated.setdefault("DataDigest", p.data_digest)
        return LoginResult(p, rsp.tsih, self.exp_statsn, rsp.exp_cmdsn, rsp.max_cmdsn,
                           self.negotiated)


_HANDLERS: dict[_S, Callable[[InitiatorLogin, LoginResponse, dict[str, str]], Outcome]] = {
    _S.AUTH_METHOD: InitiatorLogin._on_auth_method,
    _S.CHAP_ALGORITHM: InitiatorLogin._on_chap_algorithm,
    _S.CHAP_RESPONSE: InitiatorLogin._on_chap_response,
    _S.SECURITY_TRANSIT: InitiatorLogin._on_security_transit,
    _S.OPERATIONAL: InitiatorLogin._on_operational,
}
