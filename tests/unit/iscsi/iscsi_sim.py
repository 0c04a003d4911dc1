"""A test-only initiator on our own codec, wired to a TargetConnection (no sockets).

``Sim`` sends initiator PDUs into the target core, drains its events (running
commands on the SCSI stand-in unless told not to) and decodes what the target
sent back.  It is deliberately small and permissive: tests use it both to do
the right thing and to break the rules on purpose.
"""

from __future__ import annotations

from typing import Any

from scsi_standin import StandinDevice, run_sync

from blockyard.iscsi import (
    NEED_DATA,
    CommandReady,
    PortalConfig,
    TargetConnection,
    TargetPolicy,
    TaskManagement,
)
from blockyard.iscsi.chap import ChapCredentials, chap_response
from blockyard.iscsi.framing import PduReader, encode_pdu_bytes
from blockyard.iscsi.keys import target_preferences
from blockyard.iscsi.pdu import Pdu
from blockyard.iscsi.pdu_initiator import LoginRequest, ScsiCommandPdu
from blockyard.iscsi.pdu_target import LoginResponse
from blockyard.iscsi.textkeys import encode_text, format_hex, parse_binary, parse_text

TARGET = "iqn.2026-11.org.blockyard:disk"
INITIATOR = "iqn.2026-11.org.blockyard:test-initiator"
OP_KEYS = [("HeaderDigest", "None"), ("DataDigest", "None"), ("InitialR2T", "No"),
           ("ImmediateData", "Yes"), ("MaxBurstLength", "262144"),
           ("FirstBurstLength", "65536"), ("MaxRecvDataSegmentLength", "65536"),
           ("MaxOutstandingR2T", "1"), ("ErrorRecoveryLevel", "0")]


def portal(**policy: Any) -> PortalConfig:
    prefs = policy.pop("prefs", None) or target_preferences()
    pol = TargetPolicy(TARGET, **policy)
    return PortalConfig({TARGET: pol}, preferences=prefs, nop_interval=0)


class Sim:
    def __init__(self, cfg: PortalConfig | None = None, device: StandinDevice | None = None,
                 auto: bool = True, **conn: Any) -> None:
        self.cfg = cfg or portal()
        self.target = TargetConnection(self.cfg, local_address="127.0.0.1:3260",
                                       first_statsn=1000, **conn)
        self.device = device or StandinDevice()
        self.auto = auto  # run commands / TMFs on the stand-in as they come
        self.reader = PduReader(1 << 24)
        self.cmdsn = 7
        self.itt = 0x100
        self.isid = 0x023D00000001
        self.events: list[Any] = []
        self.hd = self.dd = False

    # ---- wire --------------------------------------------------------------------
    def send(self, pdu: Pdu, raw: bytes | None = None) -> list[Pdu]:
        self.target.receive_data(raw if raw is not None else
                                 encode_pdu_bytes(pdu, self.hd, self.dd))
        self.pump()
        return self.recv()

    def pump(self) -> None:
        while True:
            ev = self.target.next_event()
            if ev is NEED_DATA:
                return
            self.events.append(ev)
            if self.auto and type(ev) is CommandReady:
                self.target.complete_command(ev.itt, run_sync(self.device.execute(ev.command)))
            elif self.auto and type(ev) is TaskManagement:
                self.target.complete_tmf(ev.itt, ev.response)

    def recv(self) -> list[Pdu]:
        for buf in self.target.data_to_send():
            self.reader.feed(buf)
        out = []
        while (pdu := self.reader.next_pdu()) is not None:
            pdu.data = bytes(pdu.data)
            out.append(pdu)
        return out

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    # ---- login ------------------------------------------------------------------
    def login_pdu(self, keys: list[tuple[str, str]], csg: int, nsg: int, transit: bool = True,
                  **kw: Any) -> LoginResponse:
        req = LoginRequest(transit=transit, csg=csg, nsg=nsg, isid=self.isid, itt=self.itt,
                           cmdsn=self.cmdsn, data=encode_text(keys), **kw)
        rsp = self.send(req)
        assert len(rsp) == 1 and isinstance(rsp[0], LoginResponse), rsp
        return rsp[0]

    def login(self, target: str = TARGET, extra: list[tuple[str, str]] | None = None,
              chap: ChapCredentials | None = None, initiator: str = INITIATOR) -> LoginResponse:
        names = [("InitiatorName", initiator), ("SessionType", "Normal"), ("TargetName", target)]
        if chap is not None:
            rsp = self.chap_login(names, chap)
            if rsp.status:
                return rsp
            names = []
        keys = dict(OP_KEYS)
        keys.update(extra or [])
        rsp = self.login_pdu(names + list(keys.items()), 1, 3)
        if rsp.status == 0 and rsp.transit:
            keys = dict(parse_text(rsp.data))
            self.hd = keys.get("HeaderDigest") == "CRC32C"
            self.dd = keys.get("DataDigest") == "CRC32C"
        return rsp

    def chap_login(self, names: list[tuple[str, str]], cred: ChapCredentials,
                   mutual: tuple[int, bytes] | None = None) -> LoginResponse:
        rsp = self.login_pdu(names + [("AuthMethod", "CHAP,None")], 0, 1)
        if rsp.status:
            return rsp
        rsp = self.login_pdu([("CHAP_A", "5")], 0, 1, transit=False)
        keys = dict(parse_text(rsp.data))
        ident, challenge = int(keys["CHAP_I"]), parse_binary(keys["CHAP_C"])
        answer = [("CHAP_N", cred.user),
                  ("CHAP_R", format_hex(chap_response(ident, cred.secret_bytes, challenge)))]
        if mutual is not None:
            answer += [("CHAP_I", str(mutual[0])), ("CHAP_C", format_hex(mutual[1]))]
        return self.login_pdu(answer, 0, 1)

    # ---- commands ----------------------------------------------------------------
    def command(self, cdb: bytes, read: int = 0, write: bytes | None = None,
                edtl: int | None = None, immediate_data: int | None = None,
                final: bool | None = None, **kw: Any) -> tuple[int, list[Pdu]]:
        itt = kw.pop("itt", None) or self.next_itt()
        data = b""
        if write is not None:
            n = len(write) if immediate_data is None else immediate_data
            data = write[:n]
        length = edtl if edtl is not None else (len(write) if write is not None else read)
        pdu = ScsiCommandPdu(read=bool(read) or kw.pop("r", False),
                             write=write is not None or kw.pop("w", False),
                             final=final if final is not None else True, itt=itt, edtl=length,
                             cmdsn=kw.pop("cmdsn", self.cmdsn), cdb=cdb, data=data, **kw)
        if not pdu.immediate:
            self.cmdsn += 1
        return itt, self.send(pdu)
