"""Events the target core hands to its transport (``TargetConnection.next_event``).

The transport reacts to each: runs a command or a task management function
against the SCSI layer and reports back, ends the session in the SCSI
layer, closes the socket.  ``NEED_DATA`` means: feed more bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from blockyard.iscsi.session import SessionInfo
from blockyard.scsi.task import ScsiCommand


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(slots=True)
class LoginComplete:
    """Full feature phase reached.  ``replaced`` is the owner of a reinstated session."""

    session: SessionInfo
    replaced: object | None = None


@dataclass(slots=True)
class CommandReady:
    """A SCSI command with all its Data-Out, in CmdSN order: run it, then ``complete_command``."""

    itt: int
    command: ScsiCommand


@dataclass(slots=True)
class TaskManagement:
    """A TMF whose affected tasks have drained: tell the SCSI layer, then ``complete_tmf``.

    ``response`` is what the iSCSI layer already decided (e.g. task does not
    exist); the transport may keep it or replace it with the SCSI layer's.
    """

    itt: int
    function: int
    lun: int
    ref_itt: int
    response: int


@dataclass(slots=True)
class SessionClosing:
    """Flush what ``data_to_send`` holds, then close the connection."""

    reason: str
    logout: bool = False  # True after a Logout Response (a clean end)
