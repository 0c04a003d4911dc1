"""Running blocking calls (file I/O, fsync) off the event loop.

One process-wide thread pool: ``os.preadv`` / ``os.pwritev`` / ``fdatasync``
release the GIL, so several threads overlap real I/O.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
_pool: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        env = int(os.environ.get("BLOCKYARD_IO_THREADS", "0"))
        workers = env or max(4, 2 * (os.cpu_count() or 1))
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="blockyard-io")
    return _pool


async def run_blocking(func: Callable[..., T], *args: Any) -> T:
    """Run ``func(*args)`` on the I/O pool and await its result."""
    return await asyncio.get_running_loop().run_in_executor(pool(), func, *args)
