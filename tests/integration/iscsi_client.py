"""A minimal asyncio iSCSI initiator on blockyard's own codec (tests only).

Enough to log in (optionally with CHAP and header digests), run SCSI commands
(answering R2Ts, gathering Data-In) and log out; plus raw ``send``/``recv``
for tests that misbehave on purpose.  Not the integrated initiator: that one
will live in src/ and handle pipelining, recovery and timeouts.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from dataclasses import dataclass, field

from blockyard.iscsi.chap import ChapCredentials, chap_response
from blockyard.iscsi.framing import PduReader, encode_pdu_bytes
from blockyard.iscsi.pdu import Pdu
from blockyard.iscsi.pdu_initiator import DataOut, LoginRequest, LogoutRequest, ScsiCommandPdu
from blockyard.iscsi.pdu_target import R2T, DataIn, LoginResponse, ScsiResponse
from blockyard.iscsi.textkeys import encode_text, format_hex, parse_binary, parse_text

INITIATOR = "iqn.2026-11.org.blockyard:it-initiator"
_ISIDS = itertools.count(0x023D00010000)


@dataclass
class Result:
    status: int
    data: bytes = b""
    sense: bytes = b""
    flags: int = 0
    residual: int = 0
    pdus: list[Pdu] = field(default_factory=list)


class MiniInitiator:
    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.codec = PduReader(1 << 24)
        self.hd = False
        self.cmdsn = 1
        self.exp_statsn = 0
        self.itt = itertools.count(1)
        self.isid = next(_ISIDS)
        self.mrdsl = 8192  # the target's declared MaxRecvDataSegmentLength

    async def connect(self, host: str, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    # ---- raw PDUs -----------------------------------------------------------------
    async def send(self, pdu: Pdu) -> None:
        assert self.writer is not None
        self.writer.write(encode_pdu_bytes(pdu, self.hd))
        await self.writer.drain()

    async def recv(self, timeout: float = 10.0) -> Pdu:
        assert self.reader is not None
        while True:
            pdu = self.codec.next_pdu()
            if pdu is not None:
                pdu.data = bytes(pdu.data)
                statsn = getattr(pdu, "statsn", 0)
                if statsn:
                    self.exp_statsn = statsn + 1
                return pdu
            chunk = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
            if not chunk:
                raise ConnectionError("target closed the connection")
            self.codec.feed(chunk)

    # ---- login / logout ------------------------------------------------------------------
    async def login(self, target: str, *, initiator: str = INITIATOR,
                    chap: ChapCredentials | None = None, header_digest: str = "None",
                    keys: dict[str, str] | None = None) -> LoginResponse:
        names = [("InitiatorName", initiator), ("SessionType", "Normal"), ("TargetName", target)]
        if target == "":
            names = [("InitiatorName", initiator), ("SessionType", "Discovery")]
        if chap is not None:
            rsp = await self._chap(names, chap)
            if rsp.status:
                return rsp
            names = []
        wanted = {"HeaderDigest": header_digest, "DataDigest": "None", "InitialR2T": "No",
                  "ImmediateData": "Yes", "MaxRecvDataSegmentLength": "262144",
                  "MaxBurstLength": "262144", "FirstBurstLength": "65536"}
        wanted.update(keys or {})
        rsp = await self._login_pdu(names + list(wanted.items()), 1, 3)
        answers = dict(parse_text(rsp.data))
        self.mrdsl = int(answers.get("MaxRecvDataSegmentLength", self.mrdsl))
        if rsp.status == 0 and rsp.transit:
            self.hd = answers.get("HeaderDigest") == "CRC32C"
            self.codec.header_digest = self.hd
        return rsp

    async def _login_pdu(self, pairs: list[tuple[str, str]], csg: int, nsg: int,
                         transit: bool = True) -> LoginResponse:
        await self.send(LoginRequest(transit=transit, csg=csg, nsg=nsg, isid=self.isid,
                                     itt=0x4000, cmdsn=self.cmdsn, exp_statsn=self.exp_statsn,
                                     data=encode_text(pairs)))
        rsp = await self.recv()
        assert isinstance(rsp, LoginResponse), rsp
        return rsp

    async def _chap(self, names: list[tuple[str, str]], cred: ChapCredentials) -> LoginResponse:
        rsp = await self._login_pdu(names + [("AuthMethod", "CHAP,None")], 0, 1)
        if rsp.status:
            return rsp
        rsp = await self._login_pdu([("CHAP_A", "5")], 0, 1, transit=False)
        keys = dict(parse_text(rsp.data))
        digest = chap_response(int(keys["CHAP_I"]), cred.secret_bytes,
                               parse_binary(keys["CHAP_C"]))
        return await self._login_pdu([("CHAP_N", cred.user), ("CHAP_R", format_hex(digest))],
                                     0, 1)

    async def logout(self) -> int:
        await self.send(LogoutRequest(itt=next(self.itt), cmdsn=self.cmdsn,
                                      exp_statsn=self.exp_statsn))
        rsp = await self.recv()
        return int(getattr(rsp, "response", -1))

    # ---- SCSI ---------------------------------------------------------------------------
    async def scsi(self, cdb: bytes, read: int = 0, data: bytes | None = None,
                   immediate_limit: int = 65536) -> Result:
        itt = next(self.itt)
        out = data or b""
        imm = out[:min(immediate_limit, self.mrdsl)]
        await self.send(ScsiCommandPdu(read=bool(read), write=data is not None, itt=itt,
                                       edtl=len(out) if data is not None else read,
                                       cmdsn=self.cmdsn, exp_statsn=self.exp_statsn,
                                       cdb=cdb.ljust(16, b"\0"), data=imm))
        self.cmdsn += 1
        result, chunks = Result(-1), []
        while True:
            pdu = await self.recv()
            result.pdus.append(pdu)
            if isinstance(pdu, R2T):
                await self._answer(pdu, out)
            elif isinstance(pdu, DataIn):
                chunks.append(pdu.data)
                if pdu.status_present:
                    result.status, result.flags = pdu.status, pdu.residual_flags
                    result.residual = pdu.residual
                    break
            elif isinstance(pdu, ScsiResponse):
                result.status, result.sense = pdu.status, pdu.sense
                result.flags, result.residual = pdu.flags, pdu.residual
                break
            else:
                raise AssertionError(f"unexpected {pdu!r}")
        result.data = b"".join(chunks)
        return result

    async def clear_unit_attentions(self) -> None:
        """TEST UNIT READY until GOOD: a new nexus first sees POWER ON / RESET (SPC-4)."""
        for _ in range(8):
            if (await self.scsi(TEST_UNIT_READY)).status == 0:
                return
        raise AssertionError("unit attentions do not clear")

    async def _answer(self, r2t: R2T, data: bytes) -> None:
        datasn = 0
        for off in range(r2t.offset, r2t.offset + r2t.length, self.mrdsl):
            end = min(off + self.mrdsl, r2t.offset + r2t.length)
            await self.send(DataOut(final=end == r2t.offset + r2t.length, itt=r2t.itt,
                                    ttt=r2t.ttt, exp_statsn=self.exp_statsn, datasn=datasn,
                                    offset=off, data=data[off:end]))
            datasn += 1


def read16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x88, 0, lba, blocks, 0, 0)


def write16(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", 0x8A, 0, lba, blocks, 0, 0)


INQUIRY = bytes([0x12, 0, 0, 0, 96, 0])
TEST_UNIT_READY = bytes(6)
