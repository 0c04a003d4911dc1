"""Fuzzing ``receive_data`` of both cores: random bytes during the handshake and
after it, and streams of well-framed but random options and requests.  The
only acceptable outcomes are clean events, ``NEED_DATA`` and
``RemoteProtocolError``; any other exception or a hang (SIGALRM after a few
seconds) fails.  ``-m soak`` runs the same properties with many more examples.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbdcraft import ready_client
from nbdpair import DiskApp, deadline, feed_zero_copy, make_disk

from blockyard.errors import RemoteProtocolError
from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client import ClientConnection
from blockyard.nbd.events import NEED_DATA, ExportQuery
from blockyard.nbd.server import ServerConnection

# Exceptions the server core is known to leak; none today (struct.error from INFO/GO/META
# data ending after the name was fixed).  A new finding goes here only with a strict xfail
# that shows it elsewhere.
KNOWN_SERVER_ESCAPES: tuple[type[BaseException], ...] = ()

QUICK = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
SOAK = settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
MAX_STEPS = 20_000


def run_server(server: ServerConnection, app: DiskApp) -> None:
    """Drain the server core like the transport; bounded, so a livelock fails."""
    for _ in range(MAX_STEPS):
        if server.state.value == "closed":
            return
        event = server.next_event()
        if event is NEED_DATA:
            return
        app.handle(server, event)
    raise AssertionError("next_event() never asked for data: livelock")


def feed_server(server: ServerConnection, app: DiskApp, parts: list[bytes],
                zero_copy: bool) -> None:
    try:
        with deadline(5):
            for part in parts:
                if server.state.value == "closed":
                    return
                if zero_copy:
                    feed_zero_copy(server, part, lambda: run_server(server, app))
                else:
                    server.receive_data(part)
                    run_server(server, app)
    except RemoteProtocolError:
        assert server.state.value == "closed"
    except KNOWN_SERVER_ESCAPES:
        pass


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(x, len(data)) for x in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a] or [b""]


def handshaken_server(structured: bool) -> tuple[ServerConnection, DiskApp]:
    server, app = ServerConnection(), DiskApp([make_disk("disk", 1 << 20, max_block=256 << 10)])
    server.data_to_send()
    hello = wire.CLIENT_FLAGS.pack(3)
    if structured:
        hello += wire.option(c.Opt.STRUCTURED_REPLY)
        hello += wire.option(c.Opt.SET_META_CONTEXT, wire.meta_request("disk", [c.BASE_ALLOCATION]))
    server.receive_data(hello + wire.option(c.Opt.GO, wire.info_request("disk")))
    run_server(server, app)
    assert server.state.value == "transmission"
    server.data_to_send()
    return server, app


cuts = st.lists(st.integers(0, 1 << 18), max_size=6)


@st.composite
def options(draw: st.DrawFn) -> bytes:
    """A well-framed option with a random number and random (often short) data."""
    opt = draw(st.sampled_from(list(c.Opt)) | st.integers(0, 1 << 32 - 1))
    if opt in (c.Opt.EXPORT_NAME, c.Opt.ABORT):
        opt = c.Opt.INFO
    data = draw(st.binary(max_size=40) | st.builds(
        lambda n, tail: wire.lp_string(n) + tail, st.text(max_size=8), st.binary(max_size=12)))
    return wire.option(opt, data)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request with valid magic and random fields; WRITEs carry a payload."""
    cmd = draw(st.integers(0, 9) | st.integers(0, 0xFFFF))
    if cmd == c.Cmd.DISC:
        cmd = c.Cmd.READ
    flags = draw(st.integers(0, 0xFFFF) | st.sampled_from([0, 1, 2, 4, 8, 16]))
    offset = draw(st.integers(0, 1 << 21) | st.integers(0, (1 << 64) - 1))
    length = draw(st.integers(0, 300_000) | st.integers(0, (1 << 32) - 1))
    header = wire.REQUEST.pack(c.REQUEST_MAGIC, flags, cmd, draw(st.integers(0, 99)), offset,
                               length)
    if cmd != c.Cmd.WRITE:
        return header
    return header + bytes(min(length, 300_000))  # a huge WRITE is cut short: half-sent


def server_random_handshake(prefix_flags: bool, data: bytes, cut: list[int]) -> None:
    server, app = ServerConnection(), DiskApp([make_disk()])
    server.data_to_send()
    head = wire.CLIENT_FLAGS.pack(3) if prefix_flags else b""
    feed_server(server, app, split(head + data, cut), zero_copy=False)


@QUICK
@given(st.booleans(), st.binary(max_size=600), cuts)
def test_server_random_bytes_during_handshake(prefix_flags: bool, data: bytes,
                                              cut: list[int]) -> None:
    server_random_handshake(prefix_flags, data, cut)


@QUICK
@given(st.lists(options(), max_size=8), st.binary(max_size=30), cuts, st.booleans())
def test_server_random_options(opts: list[bytes], tail: bytes, cut: list[int],
                               zero_copy: bool) -> None:
    server, app = ServerConnection(), DiskApp([make_disk()])
    server.data_to_send()
    data = wire.CLIENT_FLAGS.pack(3) + b"".join(opts) + tail
    feed_server(server, app, split(data, cut), zero_copy)


@QUICK
@given(st.booleans(), st.binary(min_size=1, max_size=2000), cuts)
def test_server_random_bytes_in_transmission(structured: bool, data: bytes,
                                             cut: list[int]) -> None:
    server, app = handshaken_server(structured)
    feed_server(server, app, split(data, cut), zero_copy=False)


@QUICK
@given(st.booleans(), st.lists(requests(), min_size=1, max_size=10), st.binary(max_size=40),
       cuts, st.booleans())
def test_server_random_requests(structured: bool, reqs: list[bytes], tail: bytes,
                                cut: list[int], zero_copy: bool) -> None:
    server, app = handshaken_server(structured)
    feed_server(server, app, split(b"".join(reqs) + tail, cut), zero_copy=zero_copy)


# ---- the client core -------------------------------------------------------------------------
def feed_client(client: ClientConnection, parts: list[bytes]) -> None:
    try:
        with deadline(5):
            for part in parts:
                client.receive_data(part)
                for _ in range(MAX_STEPS):
                    if client.next_event() is NEED_DATA:
                        break
                else:
                    raise AssertionError("client next_event() livelock")
    except RemoteProtocolError:
        pass


@st.composite
def server_messages(draw: st.DrawFn) -> bytes:
    """Simple replies and chunks with valid magic, random fields, cookies 1..4."""
    cookie = draw(st.integers(1, 4) | st.integers(0, 1 << 64 - 1))
    if draw(st.booleans()):
        return wire.simple_reply(cookie, draw(st.sampled_from([0, 0, 5, 22, 1000])))
    rtype = draw(st.sampled_from(list(c.ReplyType)) | st.integers(0, 0xFFFF))
    body = draw(st.binary(max_size=64) | st.builds(
        lambda o, d: o.to_bytes(8, "big") + d, st.integers(0, 70_000), st.binary(max_size=40)))
    return wire.chunk(cookie, rtype, body, draw(st.integers(0, 3)))


def busy_client(structured: bool) -> ClientConnection:
    client = ready_client(structured, meta={1: c.BASE_ALLOCATION} if structured else None)
    client.read(0, 64)
    client.write(0, b"x" * 8)
    client.flush()
    if structured:
        client.block_status(0, 65536)
    client.data_to_send()
    return client


@QUICK
@given(st.booleans(), st.binary(max_size=800), cuts)
def test_client_random_bytes(structured: bool, data: bytes, cut: list[int]) -> None:
    feed_client(busy_client(structured), split(data, cut))


@QUICK
@given(st.booleans(), st.lists(server_messages(), min_size=1, max_size=8), cuts)
def test_client_random_replies(structured: bool, msgs: list[bytes], cut: list[int]) -> None:
    feed_client(busy_client(structured), split(b"".join(msgs), cut))


@QUICK
@given(st.binary(max_size=400), cuts)
def test_client_random_bytes_during_handshake(data: bytes, cut: list[int]) -> None:
    client = ClientConnection()
    feed_client(client, split(wire.greeting(3) + data, cut))
    client2 = ClientConnection()
    client2.receive_data(wire.greeting(3))
    client2.next_event()
    client2.go("disk")
    feed_client(client2, split(data, cut))


# ---- soak: the same properties, many more examples (opt-in: pytest -m soak) ----------------
@pytest.mark.soak
@SOAK
@given(st.booleans(), st.lists(requests(), min_size=1, max_size=30), st.binary(max_size=200),
       cuts)
def test_soak_server_random_requests(structured: bool, reqs: list[bytes], tail: bytes,
                                     cut: list[int]) -> None:
    server, app = handshaken_server(structured)
    feed_server(server, app, split(b"".join(reqs) + tail, cut), zero_copy=True)


@pytest.mark.soak
@SOAK
@given(st.lists(options(), max_size=20), st.binary(max_size=100), cuts, st.booleans())
def test_soak_server_random_options(opts: list[bytes], tail: bytes, cut: list[int],
                                    zero_copy: bool) -> None:
    server, app = ServerConnection(), DiskApp([make_disk()])
    server.data_to_send()
    feed_server(server, app, split(wire.CLIENT_FLAGS.pack(3) + b"".join(opts) + tail, cut),
                zero_copy)


@pytest.mark.soak
@SOAK
@given(st.booleans(), st.lists(server_messages(), min_size=1, max_size=30), cuts)
def test_soak_client_random_replies(structured: bool, msgs: list[bytes],
                                    cut: list[int]) -> None:
    feed_client(busy_client(structured), split(b"".join(msgs), cut))


def test_export_query_is_answered_in_fuzz_app() -> None:
    """The fuzz harness itself answers queries (else fuzzing would stall in WAIT_APP)."""
    server, app = ServerConnection(), DiskApp([make_disk()])
    server.data_to_send()
    server.receive_data(wire.CLIENT_FLAGS.pack(3) + wire.option(c.Opt.INFO,
                                                                wire.info_request("disk")))
    run_server(server, app)
    assert isinstance(app.server_events[0], ExportQuery) and server.state.value == "options"
