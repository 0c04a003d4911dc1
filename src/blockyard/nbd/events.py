"""Events the NBD server core hands to its application, and what it needs back."""

from __future__ import annotations

from dataclasses import dataclass, field

from blockyard.nbd import constants as c


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()  # next_event(): feed more bytes first


@dataclass(frozen=True)
class ExportSpec:
    """What the application tells the core about an export it agrees to serve."""

    name: str
    size: int
    flags: int  # TransmissionFlag bits the export supports (HAS_FLAGS is added)
    description: str = ""
    min_block: int = 1
    preferred_block: int = 4096
    max_block: int = 32 << 20


@dataclass(frozen=True)
class ExportQuery:
    """The client names an export (EXPORT_NAME, INFO, GO, *_META_CONTEXT).

    The application must answer with ``accept_export(spec)`` or
    ``reject_export(rep, message)`` before the core parses anything else.
    ``go`` is True when acceptance ends negotiation.
    """

    option: int
    name: str
    go: bool


@dataclass(frozen=True)
class ListQuery:
    """NBD_OPT_LIST: answer with ``send_list([(name, description), ...])``."""


@dataclass(frozen=True)
class Disconnect:
    """The client ended the session (NBD_CMD_DISC or NBD_OPT_ABORT)."""

    reason: str


class Request:
    """One transmission-phase command, already validated against the export.

    A request the core rejects never becomes an event: its error reply is
    queued in ``data_to_send()`` instead.
    """

    __slots__ = ("cmd", "flags", "cookie", "offset", "length", "payload")

    def __init__(self, cmd: int, flags: int, cookie: int, offset: int, length: int,
                 payload: bytes | bytearray | memoryview | None = None) -> None:
        self.cmd = cmd
        self.flags = flags
        self.cookie = cookie
        self.offset = offset
        self.length = length
        self.payload = payload

    def __repr__(self) -> str:
        return (f"Request({c.Cmd(self.cmd).name}, flags={self.flags:#x}, cookie={self.cookie}, "
                f"offset={self.offset}, length={self.length})")


@dataclass
class Negotiated:
    """What the handshake settled; available as ``core.negotiated`` in transmission."""

    export: ExportSpec | None = None
    structured: bool = False
    no_zeroes: bool = False
    meta_contexts: dict[int, str] = field(default_factory=dict)
