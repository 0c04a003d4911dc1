"""What the initiator wants from a session: names, credentials, keys, timers.

``InitiatorSettings`` is plain data shared by every connection of a session
(and every reconnect).  ``offers()`` is the operational key list the login
proposes (RFC 7143 §13): large segments and bursts, ImmediateData=Yes,
InitialR2T=No, ErrorRecoveryLevel=0, MaxConnections=1 -- the target's
answers decide (``negotiation.resolve``).  Timers are seconds; 0 disables.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from blockyard.iscsi.chap import ChapCredentials
from blockyard.iscsi.keys import Params
from blockyard.iscsi.negotiation import offer_pairs
from blockyard.iscsi.url import IscsiUrl

DEFAULT_INITIATOR = "iqn.2026-11.org.blockyard:initiator"
# §13.13/§13.14: burst lengths are at most 2**24 - 1; "16 MiB" is the largest multiple of
# 512 below that, so bursts (and R2T / Data-In sequences) stay block-aligned.
MAX_BURST = (1 << 24) - 512
Pairs = list[tuple[str, str]]

# Keys proposed in a Normal session, in this order (§13.2-§13.20).  MaxRecvDataSegmentLength
# is declarative (§13.12): it states what we receive and gets no answer.
NORMAL_KEYS = ("InitialR2T", "ImmediateData", "MaxRecvDataSegmentLength", "MaxBurstLength",
               "FirstBurstLength", "MaxOutstandingR2T", "MaxConnections", "DefaultTime2Wait",
               "DefaultTime2Retain", "DataPDUInOrder", "DataSequenceInOrder",
               "ErrorRecoveryLevel")
DISCOVERY_KEYS = ("MaxRecvDataSegmentLength", "DefaultTime2Wait", "DefaultTime2Retain",
                  "ErrorRecoveryLevel")


@dataclass(frozen=True)
class InitiatorSettings:
    initiator_name: str = DEFAULT_INITIATOR
    target_name: str = ""  # "" -> a Discovery session (§13.6)
    chap: ChapCredentials | None = None  # we authenticate with these (CHAP_N / secret)
    mutual: ChapCredentials | None = None  # the target must answer our challenge with these
    header_digest: tuple[str, ...] = ("None", "CRC32C")  # offered list, preferred first
    data_digest: tuple[str, ...] = ("None",)
    max_recv_data_segment: int = 262144
    max_burst_length: int = MAX_BURST
    first_burst_length: int = MAX_BURST
    max_outstanding_r2t: int = 4
    immediate_data: bool = True
    initial_r2t: bool = False
    default_time2wait: int = 2
    nop_interval: float = 5.0  # idle seconds before a NOP-Out ping (keepalive)
    nop_timeout: float = 10.0  # seconds without any PDU after a ping: the peer is dead
    command_timeout: float = 30.0  # per command, then ABORT TASK
    tmf_timeout: float = 10.0  # an unanswered ABORT TASK drops the connection
    login_timeout: float = 10.0  # the transport's bound on connect + login

    @property
    def discovery(self) -> bool:
        return not self.target_name

    def wanted(self) -> Params:
        burst = max(512, min(self.max_burst_length, (1 << 24) - 1))
        return Params(initial_r2t=self.initial_r2t, immediate_data=self.immediate_data,
                      max_recv_data_segment=max(512, min(self.max_recv_data_segment,
                                                         (1 << 24) - 1)),
                      max_burst_length=burst,
                      first_burst_length=max(512, min(self.first_burst_length, burst)),
                      default_time2wait=self.default_time2wait, default_time2retain=0,
                      max_outstanding_r2t=self.max_outstanding_r2t)

    def offers(self) -> Pairs:
        """Operational keys for the login's operational stage."""
        wanted = self.wanted()
        pairs = [("HeaderDigest", ",".join(self.header_digest)),
                 ("DataDigest", ",".join(self.data_digest))]
        keys = DISCOVERY_KEYS if self.discovery else NORMAL_KEYS
        pairs += offer_pairs(wanted, keys)
        return [(k, str(wanted.max_recv_data_segment) if k == "MaxRecvDataSegmentLength" else v)
                for k, v in pairs]

    def names(self) -> Pairs:
        """The identification keys of the first login request (§13.4-§13.6)."""
        if self.discovery:
            return [("InitiatorName", self.initiator_name), ("SessionType", "Discovery")]
        return [("InitiatorName", self.initiator_name), ("SessionType", "Normal"),
                ("TargetName", self.target_name)]


def settings_for(url: IscsiUrl, **overrides: Any) -> InitiatorSettings:
    """Initiator settings from a parsed URL (credentials, digests, timeout)."""
    kw: dict[str, Any] = dict(
        initiator_name=url.initiator_name or DEFAULT_INITIATOR, target_name=url.target,
        chap=ChapCredentials(url.user, url.secret) if url.user else None,
        mutual=ChapCredentials(url.target_user, url.target_secret) if url.target_user else None,
        header_digest=url.header_digest, data_digest=url.data_digest)
    if url.timeout is not None:
        kw["command_timeout"] = url.timeout
    kw.update(overrides)
    return InitiatorSettings(**kw)


def random_isid() -> int:
    """A 6-byte ISID of type "Random" (§11.12.5: T=10b, A=0, B and C random, D random)."""
    return (0b10 << 46) | secrets.randbits(40)
