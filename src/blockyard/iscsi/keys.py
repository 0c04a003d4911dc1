"""The text keys we know, as a table (RFC 7143 §12, §13; RFC 7144 §8 for iSCSIProtocolLevel).

Each ``KeySpec`` says how a key is negotiated (``Kind``), when it may be
sent (``Use``), by whom, its legal range or values, which ``Params`` field
holds its result, and whether it means anything in a Discovery session.
``negotiation.py`` interprets the table; nothing else knows key names.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class Kind(Enum):
    LIST = "list"  # §6.2.1: responder picks the first offered value it supports
    AND = "and"  # §6.2.2: boolean, result = offer AND answer
    OR = "or"  # §6.2.2: boolean, result = offer OR answer
    MIN = "min"  # §6.2.2: numeric, result = minimum
    MAX = "max"  # §6.2.2: numeric, result = maximum
    DECLARATIVE = "declarative"  # §6.2: each side states its own value; no answer
    OBSOLETE = "obsolete"  # §13.25: marker keys, always answered Reject
    SPECIAL = "special"  # handled elsewhere (names, SendTargets, CHAP)


class Use(Enum):
    LOGIN = "login"  # IO / LO: only during login
    ALL = "all"  # also in full feature phase (Text)
    FFP = "ffp"  # full feature phase only (SendTargets)
    SECURITY = "security"  # security stage only (AuthMethod, CHAP_*)


@dataclass(frozen=True, slots=True)
class KeySpec:
    name: str
    kind: Kind
    use: Use = Use.LOGIN
    attr: str | None = None
    lo: int = 0
    hi: int = 0
    values: tuple[str, ...] = ()
    sender: str = "IT"  # "I": initiator only, "T": target only
    discovery: bool = True  # False: answer Irrelevant in a Discovery session


_SEG = (512, (1 << 24) - 1)

KEYS: dict[str, KeySpec] = {s.name: s for s in (
    KeySpec("AuthMethod", Kind.LIST, Use.SECURITY, None,
            values=("None", "CHAP", "KRB5", "SRP", "SPKM1", "SPKM2")),
    KeySpec("HeaderDigest", Kind.LIST, Use.LOGIN, "header_digest", values=("None", "CRC32C")),
    KeySpec("DataDigest", Kind.LIST, Use.LOGIN, "data_digest", values=("None", "CRC32C")),
    KeySpec("MaxConnections", Kind.MIN, Use.LOGIN, "max_connections", 1, 65535),
    KeySpec("SendTargets", Kind.SPECIAL, Use.FFP, sender="I"),
    KeySpec("TargetName", Kind.SPECIAL, Use.LOGIN),
    KeySpec("InitiatorName", Kind.SPECIAL, Use.LOGIN, sender="I"),
    KeySpec("SessionType", Kind.SPECIAL, Use.LOGIN, sender="I", values=("Discovery", "Normal")),
    KeySpec("TargetAlias", Kind.DECLARATIVE, Use.ALL, "target_alias", sender="T"),
    KeySpec("InitiatorAlias", Kind.DECLARATIVE, Use.ALL, "initiator_alias", sender="I"),
    KeySpec("TargetAddress", Kind.DECLARATIVE, Use.ALL, None, sender="T"),
    KeySpec("TargetPortalGroupTag", Kind.DECLARATIVE, Use.LOGIN, None, 0, 65535, sender="T"),
    KeySpec("InitialR2T", Kind.OR, Use.LOGIN, "initial_r2t", discovery=False),
    KeySpec("ImmediateData", Kind.AND, Use.LOGIN, "immediate_data", discovery=False),
    KeySpec("MaxRecvDataSegmentLength", Kind.DECLARATIVE, Use.ALL, "peer_max_recv_data_segment",
            *_SEG),
    KeySpec("MaxBurstLength", Kind.MIN, Use.LOGIN, "max_burst_length", *_SEG, discovery=False),
    KeySpec("FirstBurstLength", Kind.MIN, Use.LOGIN, "first_burst_length", *_SEG,
            discovery=False),
    KeySpec("DefaultTime2Wait", Kind.MAX, Use.LOGIN, "default_time2wait", 0, 3600),
    KeySpec("DefaultTime2Retain", Kind.MIN, Use.LOGIN, "default_time2retain", 0, 3600),
    KeySpec("MaxOutstandingR2T", Kind.MIN, Use.LOGIN, "max_outstanding_r2t", 1, 65535,
            discovery=False),
    KeySpec("DataPDUInOrder", Kind.OR, Use.LOGIN, "data_pdu_in_order", discovery=False),
    KeySpec("DataSequenceInOrder", Kind.OR, Use.LOGIN, "data_sequence_in_order",
            discovery=False),
    KeySpec("ErrorRecoveryLevel", Kind.MIN, Use.LOGIN, "error_recovery_level", 0, 2),
    KeySpec("TaskReporting", Kind.LIST, Use.LOGIN, "task_reporting",
            values=("RFC3720", "ResponseFence", "FastAbort")),
    KeySpec("iSCSIProtocolLevel", Kind.MIN, Use.LOGIN, "protocol_level", 0, 31),
    KeySpec("X#NodeArchitecture", Kind.DECLARATIVE, Use.LOGIN, None),
    KeySpec("IFMarker", Kind.OBSOLETE), KeySpec("OFMarker", Kind.OBSOLETE),
    KeySpec("IFMarkInt", Kind.OBSOLETE), KeySpec("OFMarkInt", Kind.OBSOLETE),
    KeySpec("CHAP_A", Kind.SPECIAL, Use.SECURITY), KeySpec("CHAP_I", Kind.SPECIAL, Use.SECURITY),
    KeySpec("CHAP_C", Kind.SPECIAL, Use.SECURITY), KeySpec("CHAP_N", Kind.SPECIAL, Use.SECURITY),
    KeySpec("CHAP_R", Kind.SPECIAL, Use.SECURITY),
)}

NOT_UNDERSTOOD = "NotUnderstood"
REJECT = "Reject"
IRRELEVANT = "Irrelevant"
ANSWERS = frozenset({NOT_UNDERSTOOD, REJECT, IRRELEVANT})


@dataclass(slots=True)
class Params:
    """Negotiated (or wanted) session and connection parameters.

    Field defaults are the RFC defaults (§13), i.e. what holds when nobody
    says anything.  ``max_recv_data_segment`` is what *we* receive;
    ``peer_max_recv_data_segment`` what the peer declared it receives.
    """

    header_digest: str = "None"
    data_digest: str = "None"
    max_connections: int = 1
    initial_r2t: bool = True
    immediate_data: bool = True
    max_recv_data_segment: int = 8192
    peer_max_recv_data_segment: int = 8192
    max_burst_length: int = 262144
    first_burst_length: int = 65536
    default_time2wait: int = 2
    default_time2retain: int = 20
    max_outstanding_r2t: int = 1
    data_pdu_in_order: bool = True
    data_sequence_in_order: bool = True
    error_recovery_level: int = 0
    task_reporting: str = "RFC3720"
    protocol_level: int = 0
    target_alias: str = ""
    initiator_alias: str = ""

    def copy(self) -> Params:
        return replace(self)


def target_preferences(max_recv_data_segment: int = 262144, max_burst_length: int = 1 << 20,
                       first_burst_length: int = 1 << 20, max_outstanding_r2t: int = 4,
                       header_digests: tuple[str, ...] = ("None", "CRC32C"),
                       data_digests: tuple[str, ...] = ("None", "CRC32C"),
                       ) -> tuple[Params, dict[str, tuple[str, ...]]]:
    """What our target answers with, and which list values it accepts.

    A digest list without "None" makes the digest mandatory: an initiator that
    offers "None,CRC32C" then gets CRC32C (§13.1: the responder takes the first
    offered value it accepts).
    """
    wanted = Params(initial_r2t=False, immediate_data=True,
                    max_recv_data_segment=max_recv_data_segment,
                    max_burst_length=max_burst_length,
                    first_burst_length=min(first_burst_length, max_burst_length),
                    default_time2wait=2, default_time2retain=0,
                    max_outstanding_r2t=max_outstanding_r2t, protocol_level=1)
    accepted = {"HeaderDigest": header_digests, "DataDigest": data_digests,
                "TaskReporting": ("RFC3720",),
                "AuthMethod": ("CHAP", "None")}
    return wanted, accepted
