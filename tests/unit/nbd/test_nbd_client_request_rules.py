"""The client's own obligations before a request leaves (proto.md "Command flags",
"Transmission flags", "Block size constraints"): ``check_request`` and the
LocalProtocolError of ``ClientConnection.request``."""

from __future__ import annotations

import pytest
from nbdcraft import ready_client
from nbdpair import ALL_FLAGS

from blockyard.errors import LocalProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd.client_events import ExportDetails
from blockyard.nbd.client_requests import check_request

Cmd, F, TF = c.Cmd, c.CmdFlag, c.TransmissionFlag
MiB = 1 << 20
FULL = ALL_FLAGS | TF.HAS_FLAGS | TF.SEND_DF


def export(flags: int = FULL, **kw: object) -> ExportDetails:
    details = ExportDetails("disk", MiB, flags, True, meta_contexts={1: "base:allocation"})
    for key, value in kw.items():
        setattr(details, key, value)
    return details


REFUSED = [
    ("unknown command", export(), 9, 0, 0, 0, "unknown command"),
    ("unknown flag bit 7 on READ", export(), Cmd.READ, 1 << 7, 0, 8, "not valid"),
    ("unknown flag bit 15 on BLOCK_STATUS", export(), Cmd.BLOCK_STATUS, 1 << 15, 0, 8,
     "not valid"),
    ("REQ_ONE on READ", export(), Cmd.READ, F.REQ_ONE, 0, 8, "not valid"),
    ("DF on WRITE", export(), Cmd.WRITE, F.DF, 0, 8, "not valid"),
    ("FUA without SEND_FUA", export(FULL & ~TF.SEND_FUA), Cmd.WRITE, F.FUA, 0, 8, "FUA"),
    ("DF without SEND_DF", export(FULL & ~TF.SEND_DF), Cmd.READ, F.DF, 0, 8, "DF"),
    ("FAST_ZERO not advertised", export(FULL & ~TF.SEND_FAST_ZERO), Cmd.WRITE_ZEROES,
     F.FAST_ZERO, 0, 8, "FAST_ZERO"),
    ("FLUSH not advertised", export(FULL & ~TF.SEND_FLUSH), Cmd.FLUSH, 0, 0, 0, "FLUSH"),
    ("TRIM not advertised", export(FULL & ~TF.SEND_TRIM), Cmd.TRIM, 0, 0, 8, "TRIM"),
    ("CACHE not advertised", export(FULL & ~TF.SEND_CACHE), Cmd.CACHE, 0, 0, 8, "CACHE"),
    ("ZEROES not advertised", export(FULL & ~TF.SEND_WRITE_ZEROES), Cmd.WRITE_ZEROES, 0, 0, 8,
     "WRITE_ZEROES"),
    ("write on read-only", export(FULL | TF.READ_ONLY), Cmd.WRITE, 0, 0, 8, "read-only"),
    ("trim on read-only", export(FULL | TF.READ_ONLY), Cmd.TRIM, 0, 0, 8, "read-only"),
    ("FLUSH with a range", export(), Cmd.FLUSH, 0, 0, 8, "MUST be zero"),
    ("no meta context", export(meta_contexts={}), Cmd.BLOCK_STATUS, 0, 0, 8, "meta context"),
    ("beyond the end", export(), Cmd.READ, 0, MiB - 1, 2, "beyond"),
    ("trim beyond the end", export(), Cmd.TRIM, 0, MiB, 1, "beyond"),
    ("misaligned offset", export(min_block=512), Cmd.READ, 0, 1, 512, "minimum block"),
    ("misaligned length", export(min_block=512), Cmd.TRIM, 0, 0, 100, "minimum block"),
    ("read above max", export(max_block=4096), Cmd.READ, 0, 0, 4097, "maximum"),
    ("write above max", export(max_block=4096), Cmd.WRITE, 0, 0, 8192, "maximum"),
    ("cache above max", export(max_block=4096), Cmd.CACHE, 0, 0, 8192, "maximum"),
    ("zeroes above max", export(max_block=4096), Cmd.WRITE_ZEROES, 0, 0, 8192, "maximum"),
]


@pytest.mark.parametrize(("details", "cmd", "flags", "offset", "length", "match"),
                         [v[1:] for v in REFUSED], ids=[v[0] for v in REFUSED])
def test_refused(details: ExportDetails, cmd: int, flags: int, offset: int, length: int,
                 match: str) -> None:
    problem = check_request(details, cmd, flags, offset, length)
    assert problem is not None and match in problem


ALLOWED = [
    ("read", Cmd.READ, F.FUA | F.DF, 0, 8, {}),
    ("trim above max", Cmd.TRIM, 0, 0, 8192, {"max_block": 4096}),
    ("block status above max", Cmd.BLOCK_STATUS, F.REQ_ONE, 0, MiB, {"max_block": 4096}),
    ("fast zero above max", Cmd.WRITE_ZEROES, F.FAST_ZERO | F.NO_HOLE, 0, 8192,
     {"max_block": 4096}),
    ("aligned", Cmd.WRITE, F.FUA, 512, 1024, {"min_block": 512}),
    ("flush", Cmd.FLUSH, F.FUA, 0, 0, {}),
    ("to the very end", Cmd.READ, 0, MiB - 8, 8, {}),
]


@pytest.mark.parametrize(("cmd", "flags", "offset", "length", "kw"),
                         [v[1:] for v in ALLOWED], ids=[v[0] for v in ALLOWED])
def test_allowed(cmd: int, flags: int, offset: int, length: int, kw: dict[str, int]) -> None:
    assert check_request(export(**kw), cmd, flags, offset, length) is None


def test_request_field_widths_and_payload_rules() -> None:
    client = ready_client(True)
    for bad in [dict(offset=1 << 64), dict(length=1 << 32), dict(flags=1 << 16),
                dict(cmd=1 << 16)]:
        args = {"cmd": Cmd.READ, "offset": 0, "length": 1, "flags": 0, **bad}
        with pytest.raises(LocalProtocolError):
            client.request(args["cmd"], args["offset"], args["length"], args["flags"],
                           check=False)
    with pytest.raises(LocalProtocolError):
        client.request(Cmd.WRITE, 0, 4, 0, b"abc", check=False)  # length disagrees
    with pytest.raises(LocalProtocolError):
        client.request(Cmd.READ, 0, 4, 0, b"abcd", check=False)  # payload on a READ
    with pytest.raises(LocalProtocolError):
        client.request(Cmd.DISC, check=False)
    assert client.data_to_send() == [] and client.in_flight == 0


def test_write_header_and_payload_are_separate_buffers() -> None:
    client = ready_client(True)
    payload = memoryview(bytearray(b"x" * 100))
    cookie = client.write(0, payload, fua=True)
    header, body = client.data_to_send()
    assert body is payload and len(header) == 28
    assert header[4:6] == b"\x00\x01" and int.from_bytes(header[8:16], "big") == cookie


def test_cookies_skip_those_in_flight() -> None:
    client = ready_client(True)
    client.request(Cmd.READ, 0, 1, cookie=2)
    assert [client.read(0, 1) for _ in range(3)] == [1, 3, 4]
