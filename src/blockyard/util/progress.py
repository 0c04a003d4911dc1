"""A progress bar for long operations (compact, resize, clone, merge).

``ProgressBar`` is a ``Progress`` callback (``(done, total)``): on a terminal
it redraws one line on stderr at most ``interval`` seconds apart; when stderr
is not a terminal (piped, a log file, a test) it prints nothing at all, so
scripts see only the command's result.  Use it as a context manager so the
line is finished (or left alone when nothing was drawn)::

    with ProgressBar("compacting") as bar:
        await image.compact(bar)
"""

from __future__ import annotations

import os
import sys
import time
from types import TracebackType
from typing import TextIO


class ProgressBar:
    def __init__(self, label: str, stream: TextIO | None = None, *,
                 enabled: bool | None = None, interval: float = 0.1) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self._isatty() if enabled is None else enabled
        self.interval = interval
        self._last = 0.0
        self._drawn = False
        self._state = (0, 0)

    def _isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):  # closed or not a real stream
            return False

    def __call__(self, done: int, total: int) -> None:
        self._state = (done, total)
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last >= self.interval or (total and done >= total):
            self._last = now
            self._draw(done, total)

    def render(self, done: int, total: int, width: int) -> str:
        """One line: label, bar, percentage; fits in ``width`` columns."""
        frac = min(1.0, done / total) if total > 0 else 0.0
        tail = f" {frac * 100:5.1f}%"
        label = self.label
        if len(label) > width // 2:  # keep the end of a long label (usually a file name)
            label = "..." + label[-(width // 2 - 3):]
        room = max(10, width - len(label) - len(tail) - 3)
        filled = int(room * frac)
        return f"{label} [{'#' * filled}{'.' * (room - filled)}]{tail}"

    def _draw(self, done: int, total: int) -> None:
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns or 80
        except (AttributeError, ValueError, OSError):
            width = 80
        width -= 1
        self.stream.write("\r" + self.render(done, total, width)[:width])
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            done, total = self._state
            self._draw(done, total)
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
