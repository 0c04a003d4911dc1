"""Transmission request checks (proto.md, "Request types" and "Error values").

``validate_request`` returns ``None`` for a request the application should
run, or ``(errno, message)`` for the error reply the core sends instead.
The table names, per command, the flags it may carry and the transmission
flag the server must have advertised for the command to be legal.
"""

from __future__ import annotations

from blockyard.nbd import constants as c
from blockyard.nbd.events import ExportSpec, Negotiated

# Plain ints: ~IntFlag in Python 3.11 inverts only the defined bits.
FUA, NO_HOLE, DF = int(c.CmdFlag.FUA), int(c.CmdFlag.NO_HOLE), int(c.CmdFlag.DF)
REQ_ONE, FAST_ZERO = int(c.CmdFlag.REQ_ONE), int(c.CmdFlag.FAST_ZERO)
TF = c.TransmissionFlag
MODIFY, GROW = 1, 2  # changes data (EPERM when read-only); past the end is ENOSPC

# cmd: (allowed command flags, transmission flag that must be advertised, kind, payload?)
COMMANDS: dict[int, tuple[int, int, int, bool]] = {
    c.Cmd.READ: (FUA | DF, 0, 0, True),
    c.Cmd.WRITE: (FUA, 0, MODIFY | GROW, True),
    c.Cmd.FLUSH: (FUA, int(TF.SEND_FLUSH), 0, False),
    c.Cmd.TRIM: (FUA, int(TF.SEND_TRIM), MODIFY, False),
    c.Cmd.CACHE: (FUA, int(TF.SEND_CACHE), 0, False),
    c.Cmd.WRITE_ZEROES: (FUA | NO_HOLE | FAST_ZERO, int(TF.SEND_WRITE_ZEROES), MODIFY | GROW,
                         False),
    c.Cmd.BLOCK_STATUS: (FUA | REQ_ONE, 0, 0, False),
}

EINVAL, EPERM, ENOSPC, ENOTSUP = c.EINVAL, c.EPERM, c.ENOSPC, c.ENOTSUP


def validate_request(neg: Negotiated, spec: ExportSpec, cmd: int, flags: int, offset: int,
                     length: int) -> tuple[int, str] | None:
    entry = COMMANDS.get(cmd)
    if entry is None:  # "SHOULD return NBD_EINVAL if it receives an unknown command"
        return EINVAL, f"unknown command {cmd}"
    allowed, needs_flag, kind, payload = entry
    if flags & ~allowed:
        return EINVAL, f"flags {flags:#x} not valid for {c.Cmd(cmd).name}"
    if kind & MODIFY and spec.flags & TF.READ_ONLY:  # "SHOULD return NBD_EPERM"
        return EPERM, "export is read-only"
    if flags & DF and not neg.structured:
        return EINVAL, "DF needs structured replies"
    if flags & FAST_ZERO and not spec.flags & TF.SEND_FAST_ZERO:
        return EINVAL, "fast zero was not advertised"
    if needs_flag and not spec.flags & needs_flag:
        return EINVAL, f"{c.Cmd(cmd).name} was not advertised"
    if payload and length > spec.max_block:
        return EINVAL, "request larger than the maximum block size"
    if spec.min_block > 1 and (offset | length) & (spec.min_block - 1):
        return EINVAL, f"request not aligned to {spec.min_block} bytes"
    if offset + length > spec.size:  # writes past the end: ENOSPC; reads, trims: EINVAL
        return (ENOSPC if kind & GROW else EINVAL), "request beyond the end of the export"
    if cmd == c.Cmd.BLOCK_STATUS:
        if not neg.meta_contexts:
            return EINVAL, "no meta context was negotiated"
        if length == 0:
            return EINVAL, "block status of zero length"
    return None
