"""Transmission request checks (proto.md, "Request types" and "Error values").

``validate_request`` returns ``None`` for a request the application should
run, or ``(errno, message)`` for the error reply the core sends instead.
The table names, per command, the flags it may carry and the transmission
flag the server must have advertised for the command to be legal.
"""

from __future__ import annotations

from blockyard.nbd import constants as c
from blockyard.nbd.events import ExportSpec, Negotiated

F = c.CmdFlag
TF = c.TransmissionFlag
_FUA = int(F.FUA)

# cmd: (allowed command flags, transmission flag that must be advertised, writes?, payload?)
COMMANDS: dict[int, tuple[int, int, bool, bool]] = {
    c.Cmd.READ: (_FUA | F.DF, 0, False, True),
    c.Cmd.WRITE: (_FUA, 0, True, True),
    c.Cmd.FLUSH: (_FUA, TF.SEND_FLUSH, False, False),
    c.Cmd.TRIM: (_FUA, TF.SEND_TRIM, True, False),
    c.Cmd.CACHE: (_FUA, TF.SEND_CACHE, False, False),
    c.Cmd.WRITE_ZEROES: (_FUA | F.NO_HOLE | F.FAST_ZERO, TF.SEND_WRITE_ZEROES, True, False),
    c.Cmd.BLOCK_STATUS: (_FUA | F.REQ_ONE, 0, False, False),
}

EINVAL, EPERM, ENOSPC, ENOTSUP = c.EINVAL, c.EPERM, c.ENOSPC, c.ENOTSUP


def validate_request(neg: Negotiated, spec: ExportSpec, cmd: int, flags: int, offset: int,
                     length: int) -> tuple[int, str] | None:
    entry = COMMANDS.get(cmd)
    if entry is None:  # "SHOULD return NBD_EINVAL if it receives an unknown command"
        return EINVAL, f"unknown command {cmd}"
    allowed, needs_flag, writes, payload = entry
    if flags & ~allowed:
        return EINVAL, f"flags {flags:#x} not valid for {c.Cmd(cmd).name}"
    if flags & F.DF and not neg.structured:
        return EINVAL, "DF needs structured replies"
    if flags & F.FAST_ZERO and not spec.flags & TF.SEND_FAST_ZERO:
        return EINVAL, "fast zero was not advertised"
    if needs_flag and not spec.flags & needs_flag:
        return EINVAL, f"{c.Cmd(cmd).name} was not advertised"
    if writes and spec.flags & TF.READ_ONLY:
        return EPERM, "export is read-only"
    if payload and length > spec.max_block:
        return EINVAL, "request larger than the maximum block size"
    if spec.min_block > 1 and (offset | length) & (spec.min_block - 1):
        return EINVAL, f"request not aligned to {spec.min_block} bytes"
    if offset + length > spec.size:  # writes past the end: ENOSPC, the rest: EINVAL
        return (ENOSPC if writes else EINVAL), "request beyond the end of the export"
    if cmd == c.Cmd.BLOCK_STATUS:
        if not neg.meta_contexts:
            return EINVAL, "no meta context was negotiated"
        if length == 0:
            return EINVAL, "block status of zero length"
    return None
