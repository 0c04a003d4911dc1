"""Fixtures for the SCSI layer tests (the harness lives in scsi_harness.py)."""

from __future__ import annotations

import pytest
from scsi_cdbs import I1, I2
from scsi_harness import Harness, make


@pytest.fixture
async def h() -> Harness:
    harness = make()
    await harness.clear_ua(I1)
    await harness.clear_ua(I2)
    return harness
