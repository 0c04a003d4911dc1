"""The table of operations, by name: the one list the CLI and the control API share.

The CLI names an operation and its parameters; with a server running, the
client (``cli/client.py``) turns that into the HTTP request of
``control.api.ROUTES``, and the daemon looks the name up here again; with
no server, the CLI looks it up here and runs it on the database itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from blockyard.media import attach_ops, modify, ops

Operation = Callable[..., Awaitable[Any]]

OPERATIONS: dict[str, Operation] = {
    "media.list": ops.media_list,
    "media.search": ops.media_search,
    "media.info": ops.media_info,
    "media.add": ops.media_add,
    "media.clone": modify.media_clone,
    "media.modify": modify.media_modify,
    "media.remove": ops.media_remove,
    "media.release": ops.media_release,
    "media.refresh": ops.media_refresh,
    "media.clear_inaccessible": ops.media_clear_inaccessible,
    "controllers.list": attach_ops.controller_list,
    "controllers.add": attach_ops.controller_add,
    "controllers.remove": attach_ops.controller_remove,
    "attachments.list": attach_ops.attachment_list,
    "attachments.add": attach_ops.attach,
    "attachments.remove": attach_ops.detach,
}
