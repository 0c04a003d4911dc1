"""The target's login phase (RFC 7143 §6.3, PDUs §11.12/§11.13).

Theory of operation.  A connection starts in the login phase; every Login
Request is answered by exactly one Login Response.  The state is the
current stage (CSG); the initiator moves on by setting T with a next stage
(NSG), and the target follows only when it is ready.  The table::

    stage          request CSG     handler         may move to (NSG, T=1)
    START          0 or 1          identify, then the stage's handler
    SECURITY (0)   0               _security       OPERATIONAL (1) or FULL_FEATURE (3)
    OPERATIONAL(1) 1               _operational    FULL_FEATURE (3)
    FULL_FEATURE   -               login complete (``result`` is set)
    FAILED         -               a non-zero status was sent; close the connection

* The first complete key list names the initiator (InitiatorName, required)
  and the session (SessionType, TargetName for Normal sessions): unknown
  target -> 0x0203, initiator not in the ACL -> 0x0202, missing key ->
  0x0207.  A non-zero TSIH asks to join an existing session; with
  MaxConnections=1 we refuse (0x0206, or 0x020a if no such session).
* Security: AuthMethod is chosen from the initiator's list (CHAP when the
  target has credentials, else None); CHAP runs in ``chap.ChapTarget`` and
  any failure is 0x0201.  The target sets T only once authentication is
  complete, so an initiator that offered AuthMethod with T=1 waits for CHAP.
  Skipping the security stage of a target that requires CHAP is 0x0201.
* Operational: every other key goes through ``negotiation.Negotiator``.
  Our MaxRecvDataSegmentLength (declarative) is stated once; the first
  response of a Normal session carries TargetPortalGroupTag (§13.9).
* C bit (§11.12.2): a continued key list is collected and answered with an
  empty response until the last part; an answer longer than 8192 bytes is
  sent in C-bit parts, pulled by empty requests.
* On reaching full feature phase the session is registered; a live session
  with the same (initiator, ISID, target) is reinstated (§6.3.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from blockyard.iscsi.chap import ChapCredentials, ChapFailure, ChapState, ChapTarget
from blockyard.iscsi.constants import ISCSI_VERSION, LoginStatus, Stage
from blockyard.iscsi.keys import Params, Use
from blockyard.iscsi.negotiation import Negotiator
from blockyard.iscsi.pdu_initiator import LoginRequest
from blockyard.iscsi.pdu_target import LoginResponse
from blockyard.iscsi.session import PortalConfig, SessionInfo, TargetPolicy
from blockyard.iscsi.textkeys import (
    TextAccumulator,
    TextFormatError,
    encode_text,
    parse_text,
    split_text,
)

LOGIN_SEGMENT = 8192  # §13.12: MaxRecvDataSegmentLength while logging in
Pairs = list[tuple[str, str]]


class LoginFailed(Exception):
    def __init__(self, status: LoginStatus, why: str) -> None:
        super().__init__(f"login failed 0x{int(status):04x}: {why}")
        self.status = status


@dataclass(slots=True)
class _Step:
    answers: Pairs
    transit: bool
    nsg: int


class TargetLogin:
    """One connection's login phase; see the module docstring."""

    def __init__(self, portal: PortalConfig, owner: object) -> None:
        self.portal = portal
        self.owner = owner
        wanted, accepted = portal.preferences
        self.params = Params(max_recv_data_segment=wanted.max_recv_data_segment)
        self.neg = Negotiator(wanted, dict(accepted), self.params, peer="I")
        self.stage: Stage | None = None
        self.failed: LoginStatus | None = None
        self.result: SessionInfo | None = None
        self.replaced: object | None = None
        self.first: LoginRequest | None = None
        self.initiator_name = ""
        self.policy: TargetPolicy | None = None
        self.discovery = False
        self.auth_method: str | None = None
        self.chap: ChapTarget | None = None
        self._creds: tuple[ChapCredentials | None, ChapCredentials | None] = (None, None)
        self._acc = TextAccumulator()
        self._chunks: list[bytes] = []
        self._final = (False, 0)
        self._declared = False
        self._first_response = True

    # ---- entry point ------------------------------------------------------------
    def handle(self, req: LoginRequest) -> LoginResponse:
        """Process one Login Request and return the Login Response to send."""
        try:
            self._check_header(req)
            if req.cont:
                self._acc.add(req.data)
                return self._response(req, False, req.csg, b"")
            if self._chunks:
                return self._next_chunk(req)
            pairs = self._parse(req)
            if not self.initiator_name:
                self._identify(req, pairs)
            step = _STAGES[Stage(req.csg)](self, req, pairs)
            return self._answer(req, step)
        except LoginFailed as exc:
            self.failed = exc.status
            return self._response(req, False, req.csg & 1, b"", exc.status, nsg=0)

    # ---- checks and identification ------------------------------------------------
    def _check_header(self, req: LoginRequest) -> None:
        if self.first is None:
            self.first = req
            if req.version_min > ISCSI_VERSION:
                raise LoginFailed(LoginStatus.UNSUPPORTED_VERSION, "version")
            if req.tsih:
                has = self.portal.registry.has_tsih(req.tsih)
                raise LoginFailed(LoginStatus.TOO_MANY_CONNECTIONS if has else
                                  LoginStatus.SESSION_DOES_NOT_EXIST, "MaxConnections=1")
        elif (req.isid, req.tsih, req.cid) != (self.first.isid, 0, self.first.cid):
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, "ISID/TSIH/CID changed in login")
        if req.transit and req.cont:
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, "T and C both set")  # §11.12.2
        expected = (0, 1) if self.stage is None else (int(self.stage),)
        if req.csg not in expected:
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, f"CSG {req.csg} in stage {self.stage}")
        if req.transit and (req.nsg <= req.csg or req.nsg == 2):
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, f"bad NSG {req.nsg}")
        self.stage = Stage(req.csg)

    def _parse(self, req: LoginRequest) -> Pairs:
        try:
            pairs = parse_text(self._acc.take() + bytes(req.data))
        except TextFormatError as exc:
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, str(exc)) from exc
        if len({k for k, _ in pairs}) != len(pairs):
            raise LoginFailed(LoginStatus.INITIATOR_ERROR, "a key sent twice")
        return pairs

    def _identify(self, req: LoginRequest, pairs: Pairs) -> None:
        keys = dict(pairs)
        name = keys.get("InitiatorName")
        if not name:
            raise LoginFailed(LoginStatus.MISSING_PARAMETER, "no InitiatorName")  # §13.5
        session_type = keys.get("SessionType", "Normal")
        if session_type not in ("Normal", "Discovery"):
            raise LoginFailed(LoginStatus.SESSION_TYPE_NOT_SUPPORTED, session_type)
        self.initiator_name = name
        self.discovery = self.neg.discovery = session_type == "Discovery"
        if self.discovery:
            self._creds = (self.portal.discovery_chap, self.portal.discovery_mutual_chap)
            return
        target = keys.get("TargetName")
        if not target:
            raise LoginFailed(LoginStatus.MISSING_PARAMETER, "no TargetName")  # §13.4
        policy = self.portal.targets.get(target)
        if policy is None:
            raise LoginFailed(LoginStatus.NOT_FOUND, target)
        if not policy.admits(name):
            raise LoginFailed(LoginStatus.AUTHORIZATION_FAILURE, f"{name} not in ACL of {target}")
        self.policy = policy
        self._creds = (policy.chap, policy.mutual_chap)

    # ---- stages -------------------------------------------------------------------
    def _security(self, req: LoginRequest, pairs: Pairs) -> _Step:
        required, mutual = self._creds
        self.neg.accepted["AuthMethod"] = ("CHAP",) if required else ("None",)
        answers, special = self.neg.respond(pairs, Use.SECURITY)
        if "AuthMethod" in dict(pairs):
            chosen = self.neg.results.get("AuthMethod")
            if chosen is None:
                raise LoginFailed(LoginStatus.AUTHENTICATION_FAILURE, "no acceptable AuthMethod")
            self.auth_method = str(chosen)
            if chosen == "CHAP" and required is not None:
                self.chap = ChapTarget(required, mutual)
        answers += self._security_special(special)
        done = self.auth_method == "None" or (
            self.chap is not None and self.chap.state is ChapState.DONE) or (
            required is None and self.auth_method is None)  # AuthMethod defaults to None
        if req.transit and not done and self.chap is None:
            raise LoginFailed(LoginStatus.AUTHENTICATION_FAILURE, "authentication required")
        return _Step(answers, req.transit and done, req.nsg)

    def _security_special(self, special: Pairs) -> Pairs:
        chap_keys = {k: v for k, v in special if k.startswith("CHAP_")}
        answers = [(k, "Reject") for k, _ in special if k == "SendTargets"]
        if chap_keys:
            if self.chap is None:
                raise LoginFailed(LoginStatus.AUTHENTICATION_FAILURE, "CHAP keys without CHAP")
            try:
                answers += self.chap.step(chap_keys)
            except ChapFailure as exc:
                raise LoginFailed(LoginStatus.AUTHENTICATION_FAILURE, str(exc)) from exc
        return answers

    def _operational(self, req: LoginRequest, pairs: Pairs) -> _Step:
        required = self._creds[0]
        authenticated = self.chap is not None and self.chap.state is ChapState.DONE
        if required is not None and not authenticated:
            raise LoginFailed(LoginStatus.AUTHENTICATION_FAILURE, "security stage skipped")
        answers, special = self.neg.respond(pairs, Use.LOGIN)
        answers += [(k, "Reject") for k, _ in special if k.startswith("CHAP_") or
                    k == "SendTargets"]
        return _Step(answers, req.transit, req.nsg)

    # ---- responses ------------------------------------------------------------------
    def _answer(self, req: LoginRequest, step: _Step) -> LoginResponse:
        answers = step.answers
        if self._first_response and self.policy is not None:
            answers.append(("TargetPortalGroupTag", str(self.portal.tpgt)))  # §13.9
            if self.policy.alias:
                answers.append(("TargetAlias", self.policy.alias))
        self._first_response = False
        if (step.transit or req.csg == Stage.OPERATIONAL) and not self._declared:
            answers.append(("MaxRecvDataSegmentLength", str(self.params.max_recv_data_segment)))
            self._declared = True
        chunks = split_text(encode_text(answers), LOGIN_SEGMENT)
        self._chunks = chunks[1:]
        self._final = (step.transit, step.nsg)
        if self._chunks:
            return self._response(req, False, req.csg, chunks[0], cont=True)
        return self._finish(req, chunks[0])

    def _next_chunk(self, req: LoginRequest) -> LoginResponse:
        chunk = self._chunks.pop(0)
        if self._chunks:
            return self._response(req, False, req.csg, chunk, cont=True)
        return self._finish(req, chunk)

    def _finish(self, req: LoginRequest, data: bytes) -> LoginResponse:
        transit, nsg = self._final
        if transit:
            self.stage = Stage(nsg)
            if nsg == Stage.FULL_FEATURE:
                return self._complete(req, data)
        return self._response(req, transit, req.csg, data, nsg=nsg if transit else 0)

    def _complete(self, req: LoginRequest, data: bytes) -> LoginResponse:
        target = self.policy.name if self.policy else ""
        tsih, self.replaced = self.portal.registry.open(
            (self.initiator_name, req.isid, target), self.owner)
        self.result = SessionInfo(self.initiator_name, target, req.isid, tsih, req.cid,
                                  self.discovery, self.params, self.portal.tpgt)
        rsp = self._response(req, True, req.csg, data, nsg=Stage.FULL_FEATURE)
        rsp.tsih = tsih
        return rsp

    def _response(self, req: LoginRequest, transit: bool, csg: int, data: bytes,
                  status: int = LoginStatus.SUCCESS, nsg: int = 0,
                  cont: bool = False) -> LoginResponse:
        return LoginResponse(transit=transit, cont=cont, csg=csg, nsg=nsg,
                             version_max=ISCSI_VERSION, version_active=ISCSI_VERSION,
                             isid=req.isid, tsih=req.tsih, itt=req.itt, status=int(status),
                             data=data)


_STAGES: dict[Stage, Callable[[TargetLogin, LoginRequest, Pairs], _Step]] = {
    Stage.SECURITY: TargetLogin._security,
    Stage.OPERATIONAL: TargetLogin._operational,
}
