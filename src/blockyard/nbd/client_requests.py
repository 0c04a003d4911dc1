"""What a client may send in transmission (proto.md, "Request types",
"Command flags", "Block size constraints").

``check_request`` returns the reason a request would break the client's
obligations, or ``None``.  The table names, per command, the flags it may
carry, the transmission flag the server must have advertised, whether the
command writes, and whether the maximum block size bounds its length.
"""

from __future__ import annotations

from blockyard.nbd import constants as c
from blockyard.nbd.client_events import ExportDetails

F = c.CmdFlag
TF = c.TransmissionFlag
Cmd = c.Cmd
_FUA = int(F.FUA)

# cmd: (allowed command flags, transmission flag needed, writes?, bounded by max block?)
# Plain ints on purpose: ``~`` of an IntFlag keeps only the defined bits, so
# ``flags & ~allowed`` would miss unknown flags in bits 6..15.
RULES: dict[int, tuple[int, int, bool, bool]] = {
    Cmd.READ: (int(_FUA | F.DF), 0, False, True),
    Cmd.WRITE: (_FUA, 0, True, True),
    Cmd.FLUSH: (_FUA, TF.SEND_FLUSH, False, False),
    Cmd.TRIM: (_FUA, TF.SEND_TRIM, True, False),
    Cmd.CACHE: (_FUA, TF.SEND_CACHE, False, True),
    Cmd.WRITE_ZEROES: (int(_FUA | F.NO_HOLE | F.FAST_ZERO), TF.SEND_WRITE_ZEROES, True, True),
    Cmd.BLOCK_STATUS: (int(_FUA | F.REQ_ONE), 0, False, False),
}

# A command flag that needs a transmission flag besides the command's own.
FLAG_NEEDS: tuple[tuple[int, int, str], ...] = (
    (_FUA, TF.SEND_FUA, "FUA needs NBD_FLAG_SEND_FUA"),
    (F.DF, TF.SEND_DF, "DF needs NBD_FLAG_SEND_DF (structured replies)"),
    (F.FAST_ZERO, TF.SEND_FAST_ZERO, "FAST_ZERO needs NBD_FLAG_SEND_FAST_ZERO"),
)


def check_request(export: ExportDetails, cmd: int, flags: int, offset: int,
                  length: int) -> str | None:
    rule = RULES.get(cmd)
    if rule is None:
        return f"unknown command {cmd}"
    allowed, needs, writes, bounded = rule
    name = Cmd(cmd).name
    if flags & ~allowed:
        return f"flags {flags:#x} are not valid for {name}"
    if needs and not export.flags & needs:  # "MUST NOT use a feature unless that flag was set"
        return f"the server did not advertise {name}"
    for flag, tflag, why in FLAG_NEEDS:
        if flags & flag and not export.flags & tflag:
            return why
    if writes and export.read_only:
        return "the export is read-only"
    if cmd == Cmd.FLUSH:
        return "FLUSH offset and length MUST be zero" if offset or length else None
    if cmd == Cmd.BLOCK_STATUS and not export.meta_contexts:
        return "BLOCK_STATUS needs a negotiated meta context"
    return _check_range(export, cmd, flags, offset, length, bounded)


def _check_range(export: ExportDetails, cmd: int, flags: int, offset: int, length: int,
                 bounded: bool) -> str | None:
    """proto.md "Block size constraints": alignment, export size, maximum length."""
    mb = export.min_block
    if mb > 1 and (offset % mb or length % mb):
        return f"offset/length not multiples of the minimum block size {mb}"
    if offset + length > export.size:
        return f"request {offset}+{length} beyond the export size {export.size}"
    if bounded and length > export.max_block and not (
            cmd == Cmd.WRITE_ZEROES and flags & F.FAST_ZERO):
        return f"length {length} above the maximum block size {export.max_block}"
    return None
