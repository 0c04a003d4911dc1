"""The host-cache policy ("Use Host I/O Cache", VirtualBox manual 5.7) for raw files.

``open_raw(path, read_only, host_cache)`` is the one entry point (quick mode
``--host-cache on|off`` and the registry's builder):

* **on** (the default): ``RawFile``, buffered I/O through the page cache.
  Small requests run inline, large reads may be sent with sendfile(2).
  FLUSH is ``fdatasync``; FUA is ``RWF_DSYNC``.  The page cache is a write
  cache: ``write_cache_enabled`` is True.
* **off**: ``DirectFile`` (``hostcache_direct``), O_DIRECT with page-aligned
  buffers, no read cache, a bounded write-back cache of our own (16 MiB,
  written out on FLUSH, FUA, back-pressure and within a second), unaligned
  requests read-modify-written, all I/O on the thread pool.
  ``write_cache_enabled`` is True while our cache is on (SCSI WCE may turn
  it off with ``set_write_cache(False)``: then every write is written
  through with RWF_DSYNC).
* **off on a filesystem that refuses O_DIRECT** (tmpfs: EINVAL at open, or
  a probe read that fails with EINVAL): a warning once per filesystem in the
  log, then ``RawFile`` (buffered I/O, FLUSH = fdatasync) as for "on".

What NBD clients see (``transport.nbd_ops.export_flags``) is the same in
both modes for a writable raw file: HAS_FLAGS, SEND_FLUSH, SEND_FUA,
SEND_TRIM, SEND_WRITE_ZEROES, SEND_FAST_ZERO, SEND_DF, SEND_CACHE and
CAN_MULTI_CONN (one cache object per medium, shared by every connection, so
a FLUSH on one connection covers writes made on all).  "off" differs in not
offering the transport's sendfile / thread-read bypass, and in NBD_CMD_CACHE
being a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from blockyard.block.hostcache_direct import DirectFile, DirectIOUnsupported
from blockyard.block.layer import Layer
from blockyard.block.raw import RawFile
from blockyard.errors import ConfigError

log = logging.getLogger("blockyard.hostcache")
_warned_filesystems: set[int] = set()


def parse_host_cache(text: str | bool) -> bool:
    """``on``/``off`` (also yes/no, true/false, 1/0) -> bool; ConfigError otherwise."""
    if isinstance(text, bool):
        return text
    value = text.strip().lower()
    if value in ("on", "yes", "true", "1"):
        return True
    if value in ("off", "no", "false", "0"):
        return False
    raise ConfigError(f"host cache must be 'on' or 'off', not {text!r}")


def open_raw(path: str | os.PathLike[str], read_only: bool = False, host_cache: bool = True,
             **direct_options: float) -> Layer:
    """Open a raw image under the host-cache policy (see the module docstring)."""
    if host_cache:
        return RawFile(path, read_only=read_only)
    try:
        return DirectFile(path, read_only=read_only, **direct_options)  # type: ignore[arg-type]
    except DirectIOUnsupported as exc:
        _warn_once(os.fspath(path), str(exc))
        return RawFile(path, read_only=read_only)


def _warn_once(path: str, reason: str) -> None:
    try:
        dev = os.stat(path).st_dev
    except OSError:
        dev = -1
    if dev in _warned_filesystems:
        log.debug("%s: host cache off not possible (%s); buffered I/O", path, reason)
        return
    _warned_filesystems.add(dev)
    log.warning("%s; this filesystem does not support direct I/O, so images on it use "
                "buffered I/O with fdatasync on flush (host cache effectively on)", reason)


def host_cache_in_force(layer: Layer) -> bool:
    """True if ``layer`` (a leaf from ``open_raw``) goes through the page cache."""
    return not isinstance(layer, DirectFile)


def write_cache_control(layer: Layer) -> tuple[bool, Callable[[bool], None] | None]:
    """For the SCSI caching mode page: (WCE now, a setter or None), found down the stack.

    ``DiskOptions(write_cache=enabled, on_write_cache_change=setter)``: with the
    host cache off the setter switches our write-back cache; with it on (page
    cache) there is nothing to switch and WCE stays reported as 1.
    """
    node: Layer | None = layer
    while node is not None:
        setter = getattr(node, "set_write_cache", None)
        if callable(setter):
            return bool(getattr(node, "write_cache_enabled", True)), setter
        node = node.inner
    return True, None
