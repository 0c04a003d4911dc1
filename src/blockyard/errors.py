"""The one exception tree of blockyard.

Every error a user or a peer can provoke is one of these; the protocol edges
map them to wire errors and the CLI maps them to one line and an exit status.
"""

from __future__ import annotations

import errno as _errno


class BlockyardError(Exception):
    """Base of every error blockyard raises on purpose."""

    exit_status = 1


class ProtocolError(BlockyardError):
    """A protocol state machine was driven wrongly."""


class LocalProtocolError(ProtocolError):
    """We (the local side) tried something the protocol forbids: a bug."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol.

    ``code`` is what to send back (an NBD errno / reply error, an iSCSI reject
    reason); ``fatal`` says the connection must be dropped.
    """

    def __init__(self, message: str, code: int = 0, fatal: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal


class BlockError(BlockyardError):
    """An I/O request failed; ``errno`` says how (EIO, ENOSPC, EPERM, ...)."""

    exit_status = 5

    def __init__(self, err: int, message: str = "") -> None:
        super().__init__(message or _errno.errorcode.get(err, str(err)))
        self.errno = err


class MediaError(BlockyardError):
    """An image cannot be opened, created or changed: names the file and the problem."""

    exit_status = 4


class ConfigError(BlockyardError):
    """A configuration file or command line is wrong."""

    exit_status = 2


class NotFoundError(BlockyardError):
    """A named medium, export, controller or group does not exist."""

    exit_status = 3


class ConflictError(BlockyardError):
    """The operation conflicts with the current state (in use, exists, has children)."""

    exit_status = 6
