"""Events the initiator core hands to its transport (``InitiatorConnection.next_event``).

``NEED_DATA`` (shared with the target core) means: feed more bytes.  After
``LoginRedirected``, ``LoginFailed``, ``LoggedOut`` or ``ConnectionFailed``
the connection is over: the transport closes the socket and asks the
session what comes next (``initiator_session``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from blockyard.iscsi.events import NEED_DATA
from blockyard.iscsi.initiator_command import Command
from blockyard.iscsi.initiator_login import LoginError, LoginRedirect, LoginResult

__all__ = ["NEED_DATA", "AsyncReceived", "CommandDone", "ConnectionFailed", "InitiatorState",
           "LoggedOut", "LoginDone", "LoginFailed", "LoginRedirected", "TextDone", "TmfDone"]


class InitiatorState(Enum):
    LOGIN = "login"
    FULL_FEATURE = "full-feature"
    LOGGING_OUT = "logging-out"
    CLOSED = "closed"


@dataclass(slots=True)
class LoginDone:
    result: LoginResult


@dataclass(slots=True)
class LoginRedirected:
    redirect: LoginRedirect


@dataclass(slots=True)
class LoginFailed:
    error: LoginError


@dataclass(slots=True)
class CommandDone:
    """``command`` has its outcome: status + sense + data, or ``error`` (timed out, rejected)."""

    command: Command


@dataclass(slots=True)
class TextDone:
    itt: int
    pairs: list[tuple[str, str]]
    error: str = ""


@dataclass(slots=True)
class TmfDone:
    itt: int
    function: int
    response: int


@dataclass(slots=True)
class AsyncReceived:
    """An Asynchronous Message (§11.9); the core has already acted on it."""

    event: int
    param1: int
    param2: int
    param3: int
    sense: bytes = b""


@dataclass(slots=True)
class LoggedOut:
    response: int
    time2wait: int
    time2retain: int


@dataclass(slots=True)
class ConnectionFailed:
    """The connection cannot go on: a dead peer, a protocol error, an unanswered TMF.

    ``time2wait`` is a wait the target asked for (Async Message), if any.
    """

    reason: str
    time2wait: float | None = None
