"""Large NBD requests served off the loop thread (a mixin of ``NbdConnection``).

Reads of a raw file go out with sendfile(2) from an I/O thread, reads of data
stored plainly in image files are mapped and sent the same way, other large
reads are read and sent by an I/O thread, and large writes to a raw file run
on one; the loop is woken once for many finished requests (``_reap_threaded``)
to account for them.  See nbd_server.py.
"""

from __future__ import annotations

import asyncio
import errno
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from blockyard.block.layer import FileMap
from blockyard.nbd import constants as c
from blockyard.nbd import replies
from blockyard.nbd.events import Request
from blockyard.nbd.server import ServerConnection
from blockyard.transport.nbd_exports import Export
from blockyard.transport.sockwire import FileRange, SocketWire

if TYPE_CHECKING:
    from blockyard.transport.nbd_server import NbdServer

_FUA = int(c.CmdFlag.FUA)


class LargeRequests:
    """The I/O-thread paths; the attributes are ``NbdConnection``'s."""

    server: NbdServer
    core: ServerConnection
    wire: SocketWire
    loop: asyncio.AbstractEventLoop
    export: Export | None
    _finished: deque[Request]
    _wake_pending: bool

    def _done(self, req: Request) -> None:
        raise NotImplementedError

    def _read_sendfile(self, req: Request, export: Export, fd: int) -> None:
        """A large read of a raw file: header, then sendfile(2) from an I/O thread."""
        data: Any = FileRange(fd, req.offset, req.length)
        out: Any
        if self.core.negotiated.structured:
            out = replies.read_structured(req.cookie, req.offset, data)
        else:
            out = replies.read_simple(req.cookie, data)
        self.wire.send_threaded(out)
        export.stats["requests"] += 1
        export.stats["bytes"] += req.length
        self._done(req)

    def _read_mapped(self, req: Request, export: Export,
                     mapper: Callable[[int, int], FileMap | None], tail: int = 4096) -> bool:
        """A large read of data stored plainly in image files (``Layer.sync_map``): the
        header, the runs with sendfile(2) from an I/O thread, and the last ``tail`` bytes
        read now into a buffer that releases the map once the wire has sent or dropped
        it -- after the runs before it.  False when the layer cannot map the range."""
        fmap = mapper(req.offset, req.length)
        if fmap is None:
            return False
        try:
            runs, last = fmap.split_tail(tail)
        except OSError:
            fmap.release()
            return False  # the ordinary path reports the error
        data: Any = FileRange(-1, 0, req.length)  # stands for the data in the header
        out: Any
        if self.core.negotiated.structured:
            out = replies.read_structured(req.cookie, req.offset, data)
        else:
            out = replies.read_simple(req.cookie, data)
        out[-1:] = [FileRange(fd, off, n) for fd, off, n in runs] + [last]
        self.wire.send_threaded(out)
        export.stats["requests"] += 1
        export.stats["bytes"] += req.length
        self._done(req)
        return True

    def _read_in_thread(self, req: Request, export: Export,
                        reader: Callable[[int, int], Any]) -> None:
        """A large read on an I/O thread: read, then send, both without the GIL."""
        structured = self.core.negotiated.structured
        try:
            data = reader(req.offset, req.length)
            if structured:
                out: Any = replies.read_structured(req.cookie, req.offset, data)
            else:
                out = replies.read_simple(req.cookie, data)
        except OSError as exc:
            out = [replies.error(req.cookie, exc.errno or errno.EIO, structured, str(exc))]
        self.wire.send_blocking(out)
        self._finished.append(req)  # deque.append is atomic; one wake-up serves many
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._reap_threaded)

    def _write_in_thread(self, req: Request, writer: Callable[[int, Any, bool], None]) -> None:
        """A large write to a raw file on an I/O thread: write, reply, recycle the buffer."""
        try:
            writer(req.offset, req.payload, bool(req.flags & _FUA))
            out = replies.ok(req.cookie)
        except OSError as exc:
            err = exc.errno or errno.EIO
            out = replies.error(req.cookie, errno.ENOSPC if err in (errno.EDQUOT, errno.EFBIG)
                                else err, self.core.negotiated.structured, str(exc))
        self.wire.send_blocking([out])
        self.server.payloads.put(req.payload)
        req.payload = None
        self._finished.append(req)
        if not self._wake_pending:
            self._wake_pending = True
            self.loop.call_soon_threadsafe(self._reap_threaded)

    def _reap_threaded(self) -> None:
        self._wake_pending = False
        stats = self.export.stats if self.export else {"requests": 0, "bytes": 0}
        while self._finished:
            req = self._finished.popleft()
            stats["requests"] += 1
            stats["bytes"] += req.length
            self._done(req)
