"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.3, 6.18): not yet."""

from __future__ import annotations

from blockyard.scsi.commands import Command

XCOPY_COMMANDS: list[Command] = []
