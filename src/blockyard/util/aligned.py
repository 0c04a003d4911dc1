"""Page-aligned buffers for O_DIRECT I/O, backed by anonymous ``mmap``.

O_DIRECT wants the memory address, the file offset and the length aligned to
the device's logical block size; an anonymous mapping starts on a page
boundary, which satisfies every logical block size up to the page size.

* ``AlignedBuffer(size)``: one mapping; ``view`` is a writable memoryview of
  exactly ``size`` bytes; ``close()`` unmaps it (every view taken from it must
  be released first, as with any mmap);
* ``BufferPool``: keeps released buffers by power-of-two size class so the
  hot path does not map, fault in and unmap memory for every request; it is
  thread-safe, because I/O threads fill and drain the buffers;
* ``align_down`` / ``align_up`` for offsets.
"""

from __future__ import annotations

import mmap
import threading

PAGE = mmap.PAGESIZE


def align_down(n: int, align: int) -> int:
    return n - n % align


def align_up(n: int, align: int) -> int:
    return -(-n // align) * align


def is_aligned(address_or_offset: int, align: int) -> bool:
    return address_or_offset % align == 0


class AlignedBuffer:
    """An anonymous, page-aligned mapping of at least ``size`` bytes."""

    __slots__ = ("_map", "capacity", "view")

    def __init__(self, size: int) -> None:
        self.capacity = max(PAGE, align_up(size, PAGE))
        self._map = mmap.mmap(-1, self.capacity)
        self.view = memoryview(self._map)

    def __len__(self) -> int:
        return self.capacity

    def close(self) -> None:
        self.view.release()
        self._map.close()

    def __enter__(self) -> AlignedBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _size_class(size: int) -> int:
    return max(PAGE, 1 << (max(size, 1) - 1).bit_length())


class BufferPool:
    """Reusable aligned buffers; ``get(n)`` returns one of capacity >= n.

    At most ``max_bytes`` of idle buffers are kept; buffers larger than
    ``max_buffer`` are never kept.
    """

    def __init__(self, max_bytes: int = 64 << 20, max_buffer: int = 32 << 20) -> None:
        self.max_bytes = max_bytes
        self.max_buffer = max_buffer
        self._idle: dict[int, list[AlignedBuffer]] = {}
        self._idle_bytes = 0
        self._lock = threading.Lock()

    def get(self, size: int) -> AlignedBuffer:
        cls = _size_class(size)
        with self._lock:
            free = self._idle.get(cls)
            if free:
                self._idle_bytes -= cls
                return free.pop()
        return AlignedBuffer(cls)

    def put(self, buf: AlignedBuffer) -> None:
        cls = buf.capacity
        with self._lock:
            keep = (cls <= self.max_buffer and cls == _size_class(cls)
                    and self._idle_bytes + cls <= self.max_bytes)
            if keep:
                self._idle.setdefault(cls, []).append(buf)
                self._idle_bytes += cls
        if not keep:
            buf.close()

    def clear(self) -> None:
        with self._lock:
            idle, self._idle, self._idle_bytes = self._idle, {}, 0
        for bufs in idle.values():
            for buf in bufs:
                buf.close()

    @property
    def idle_bytes(self) -> int:
        return self._idle_bytes
