"""Sans-IO iSCSI (RFC 7143): PDU codec, digests, text keys and negotiation, login with
CHAP, and the target connection state machine.

Nothing here touches sockets, the event loop or the clock: bytes go in with
``receive_data``, events come out of ``next_event``, bytes to send come out
of ``data_to_send`` as a list of buffers, and time enters as ``now``
arguments.  ``blockyard.transport.iscsi_target`` is the asyncio shell.

Map: ``constants`` (numbers), ``serial`` (RFC 1982), ``digest`` (CRC32C),
``pdu`` / ``pdu_initiator`` / ``pdu_target`` (BHS codec, both directions),
``framing`` (stream reader, buffers out), ``textkeys`` / ``keys`` /
``negotiation`` (§6, §13), ``chap`` (§12.1.3), ``login`` (§6.3),
``cmdsn`` (§4.2.2.1), ``tasks`` (Data-Out / R2T), ``control`` (NOP, Text,
TMF, Logout), ``discovery`` (SendTargets), ``session`` (policies, registry),
``events``, ``target`` (the connection state machine).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from blockyard.iscsi.events import (
        NEED_DATA,
        CommandReady,
        LoginComplete,
        SessionClosing,
        TaskManagement,
    )
    from blockyard.iscsi.session import PortalConfig, SessionInfo, SessionRegistry, TargetPolicy
    from blockyard.iscsi.target import TargetConnection

# Imported on first use (PEP 562): the initiator's modules (and every CLI command that
# may open a remote medium) need none of the target's machinery.
_WHERE = {"NEED_DATA": "events", "CommandReady": "events", "LoginComplete": "events",
          "SessionClosing": "events", "TaskManagement": "events", "PortalConfig": "session",
          "SessionInfo": "session", "SessionRegistry": "session", "TargetPolicy": "session",
          "TargetConnection": "target"}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'blockyard.iscsi' has no attribute {name!r}")
    return getattr(importlib.import_module(f"blockyard.iscsi.{module}"), name)


__all__ = [
    "NEED_DATA",
    "CommandReady",
    "LoginComplete",
    "PortalConfig",
    "SessionClosing",
    "SessionInfo",
    "SessionRegistry",
    "TargetConnection",
    "TargetPolicy",
    "TaskManagement",
]
