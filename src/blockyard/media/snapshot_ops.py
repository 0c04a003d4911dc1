"""The snapshot operations by name, for the table the CLI and the control API share.

``media/operations.py`` maps operation names to functions; these are the
snapshot ones (``control/api.py`` adds them to that table and routes
``/v1/media/{ref}/snapshots...`` to them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from blockyard.media.snapshot_delete import snapshot_delete
from blockyard.media.snapshots import snapshot_list, snapshot_restore, snapshot_take

SNAPSHOT_OPERATIONS: dict[str, Callable[..., Awaitable[Any]]] = {
    "snapshots.list": snapshot_list,
    "snapshots.take": snapshot_take,
    "snapshots.restore": snapshot_restore,
    "snapshots.delete": snapshot_delete,
}
