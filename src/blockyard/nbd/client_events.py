"""Events the NBD client core (``client.ClientConnection``) hands to its application.

Handshake events carry the option they answer; an option is finished by
exactly one final event (``OptionAck``, ``OptionError`` or ``Ready``), after
which the application may send the next option (proto.md, "Fixed newstyle
negotiation": one option at a time).  Transmission events carry the cookie
of the request they answer; a request is finished by exactly one
``RequestDone``, after any ``ReadChunk`` / ``HoleChunk`` /
``BlockStatusChunk`` / ``ErrorChunk`` events for the same cookie.

Per-request events are plain slotted dataclasses: they are built once per
reply on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from blockyard.nbd import constants as c

Buffer = bytes | bytearray | memoryview

DEFAULT_MIN_BLOCK = 1
DEFAULT_PREFERRED_BLOCK = 4096
DEFAULT_MAX_BLOCK = 32 << 20  # what a careful client assumes without NBD_INFO_BLOCK_SIZE


# ---- handshake ------------------------------------------------------------------------
@dataclass(frozen=True)
class Greeting:
    """The server's greeting arrived; the client flags have been queued."""

    handshake_flags: int
    fixed_newstyle: bool
    no_zeroes: bool


@dataclass(frozen=True)
class OptionAck:
    """NBD_REP_ACK: the pending option succeeded (final reply)."""

    option: int


@dataclass(frozen=True)
class OptionError:
    """An error reply (bit 31 set) to the pending option (final reply)."""

    option: int
    reply: int
    message: str


@dataclass(frozen=True)
class ServerEntry:
    """One NBD_REP_SERVER reply to NBD_OPT_LIST."""

    name: str
    description: str


@dataclass(frozen=True)
class MetaContext:
    """One NBD_REP_META_CONTEXT reply (the id is 0 / meaningless for LIST)."""

    option: int
    context_id: int
    name: str


@dataclass(frozen=True)
class ExportInfo:
    """NBD_INFO_EXPORT: size and transmission flags."""

    option: int
    size: int
    flags: int


@dataclass(frozen=True)
class InfoName:
    option: int
    name: str


@dataclass(frozen=True)
class InfoDescription:
    option: int
    description: str


@dataclass(frozen=True)
class InfoBlockSize:
    option: int
    minimum: int
    preferred: int
    maximum: int


@dataclass(frozen=True)
class InfoUnknown:
    """An information type this client does not know (proto.md: MUST be ignored)."""

    option: int
    info_type: int
    data: bytes


@dataclass
class ExportDetails:
    """What the handshake settled; ``ClientConnection.export`` in transmission."""

    name: str
    size: int
    flags: int
    structured: bool = False
    min_block: int = DEFAULT_MIN_BLOCK
    preferred_block: int = DEFAULT_PREFERRED_BLOCK
    max_block: int = DEFAULT_MAX_BLOCK
    block_size_advertised: bool = False
    description: str = ""
    meta_contexts: dict[int, str] = field(default_factory=dict)

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    @property
    def read_only(self) -> bool:
        return self.has(c.TransmissionFlag.READ_ONLY)


@dataclass(frozen=True)
class Ready:
    """Negotiation ended (GO acknowledged or EXPORT_NAME answered): transmission."""

    option: int
    export: ExportDetails


@dataclass(frozen=True)
class Closed:
    """The server closed the connection where that is allowed (clean end)."""

    reason: str


# ---- transmission ------------------------------------------------------------------------
@dataclass(slots=True)
class ReadChunk:
    """Data for a READ: ``len(data)`` bytes of the export starting at ``offset``."""

    cookie: int
    offset: int
    data: Buffer


@dataclass(slots=True)
class HoleChunk:
    """NBD_REPLY_TYPE_OFFSET_HOLE: ``length`` bytes at ``offset`` read as zeroes."""

    cookie: int
    offset: int
    length: int


@dataclass(slots=True)
class BlockStatusChunk:
    """NBD_REPLY_TYPE_BLOCK_STATUS for one meta context: ``(length, flags)`` extents."""

    cookie: int
    context_id: int
    extents: list[tuple[int, int]]


@dataclass(slots=True)
class ErrorChunk:
    """An error chunk of a structured reply (``offset`` for ERROR_OFFSET)."""

    cookie: int
    error: int
    message: str
    offset: int | None = None


@dataclass(slots=True)
class RequestDone:
    """The final reply to a request; ``error`` is 0 on success, else the first error."""

    cookie: int
    cmd: int
    error: int
    message: str = ""
