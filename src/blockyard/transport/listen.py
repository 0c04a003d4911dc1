"""Listening sockets and accept loops shared by the NBD server and the iSCSI target.

Both protocols own their connection sockets (see sockwire.py), so they accept
with ``loop.sock_accept`` rather than ``loop.create_server``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any


def open_listener(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (IPv6 when the host has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lsock = socket.socket(family, socket.SOCK_STREAM)
    try:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, port))
        lsock.listen(backlog)
        lsock.setblocking(False)
    except OSError:
        lsock.close()
        raise
    return lsock


async def accept_forever(lsock: socket.socket, handle: Callable[[socket.socket, Any], None],
                         log: logging.Logger, what: str) -> None:
    """Hand every accepted connection to ``handle``; accept errors (EMFILE and
    friends) are logged and retried after a breath, never fatal."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            sock, addr = await loop.sock_accept(lsock)
        except asyncio.CancelledError:
            raise
        except OSError as exc:
            log.error("%s: accept failed: %s", what, exc)
            await asyncio.sleep(0.1)
            continue
        handle(sock, addr)
