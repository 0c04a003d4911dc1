"""VMDK maintenance: check, compact, resize (stub)."""

from __future__ import annotations

from typing import Any

from blockyard.block.formats.base import CheckReport, Progress


def check_image(img: Any, repair: bool) -> CheckReport:
    report = CheckReport(img.path)
    for e in img.extents_:
        e.check(report, repair)
    return report


async def compact_image(img: Any, progress: Progress | None) -> int:
    return 0


async def resize_image(img: Any, new_size: int, force: bool) -> None:
    raise NotImplementedError
