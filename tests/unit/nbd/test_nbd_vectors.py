"""Hand-written wire vectors (nbd/fixtures/wire-vectors.json), both ways: the
encoders must produce the hex, and the receiving core must decode it into the
fields (architecture.md §4: "vector tables (fields <-> hex) both ways")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nbdcraft import feed, greeted, ready_client
from nbdpair import server_in_transmission

from blockyard.nbd import client_events as ev
from blockyard.nbd import constants as c
from blockyard.nbd import wire
from blockyard.nbd.client import ClientConnection
from blockyard.nbd.events import Disconnect, ExportQuery, Request
from blockyard.nbd.server import ServerConnection

FIXTURES = Path(__file__).resolve().parents[3] / "nbd" / "fixtures" / "wire-vectors.json"
VECTORS = json.loads(FIXTURES.read_text())


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


# ---- server -> client ---------------------------------------------------------------------------
ENCODERS = {
    "greeting": lambda f: wire.greeting(f["flags"]),
    "option_reply": lambda f: wire.option_reply(f["option"], f["reply"], unhex(f["data"])),
    "simple_reply": lambda f: wire.simple_reply(f["cookie"], f["error"]),
    "chunk": lambda f: wire.chunk(f["cookie"], f["type"], unhex(f["payload"]), f["flags"]),
    "export_name_reply": lambda f: wire.EXPORT_NAME_REPLY.pack(f["size"], f["flags"]),
}


@pytest.mark.parametrize("vector", VECTORS["server"], ids=ids(VECTORS["server"]))
def test_server_vectors_encode(vector: dict[str, Any]) -> None:
    assert ENCODERS[vector["kind"]](vector["fields"]) == unhex(vector["hex"])


def client_for(setup: list[list[Any]] | None) -> ClientConnection:
    """``["ready", "structured"|"simple", contexts...]`` first means: in transmission."""
    if setup is None:
        return ClientConnection()
    steps = list(setup)
    if steps[0][0] == "ready":
        _, mode, *contexts = steps.pop(0)
        meta = dict(enumerate(contexts, 1)) or None
        client = ready_client(mode == "structured", meta=meta, size=1 << 20)
    else:
        client = greeted()
    for method, *args in steps:
        if method == "structured":
            client.structured_reply()
            feed(client, wire.option_reply(c.Opt.STRUCTURED_REPLY, c.Rep.ACK))
        elif method == "request":
            cmd, offset, length, cookie = args
            client.request(cmd, offset, length, cookie=cookie, check=False)
        else:
            getattr(client, method)(*args)
    client.data_to_send()
    return client


def expected(name: str, kw: dict[str, Any]) -> object:
    kw = dict(kw)
    if "data" in kw:
        kw["data"] = kw["data"].encode()
    if "extents" in kw:
        kw["extents"] = [tuple(e) for e in kw["extents"]]
    return getattr(ev, name)(**kw)


@pytest.mark.parametrize("vector", VECTORS["server"], ids=ids(VECTORS["server"]))
def test_server_vectors_decode(vector: dict[str, Any]) -> None:
    client = client_for(vector.get("client_setup"))
    events = feed(client, unhex(vector["hex"]))
    want = vector["client_events"]
    assert len(events) == len(want)
    for event, (name, kw) in zip(events, want, strict=True):
        if name == "Ready":  # compare what the vector states
            assert isinstance(event, ev.Ready)
            assert (event.export.size, event.export.flags) == (kw["size"], kw["flags"])
        else:
            got = event
            if isinstance(got, ev.ReadChunk):
                got = ev.ReadChunk(got.cookie, got.offset, bytes(got.data))
            assert got == expected(name, kw)


# ---- client -> server ---------------------------------------------------------------------------
def client_output(vector: dict[str, Any]) -> tuple[bytes, ClientConnection]:
    f, kind = vector["fields"], vector["kind"]
    if kind == "client_flags":
        client = ClientConnection()
        client.receive_data(wire.greeting(f["flags"]))
        client.next_event()
        return b"".join(client.data_to_send()), client
    if kind == "request":
        client = ready_client(True, meta={1: c.BASE_ALLOCATION}, size=1 << 20)
        if f["cmd"] == c.Cmd.DISC:
            client.disconnect()
        else:
            client.request(f["cmd"], f["offset"], f["length"], f["flags"], cookie=f["cookie"],
                           check=False)
        return b"".join(bytes(b) for b in client.data_to_send()), client
    client = greeted()
    data = unhex(f["data"])
    if f["option"] == c.Opt.SET_META_CONTEXT:
        client.structured_reply()
        feed(client, wire.option_reply(c.Opt.STRUCTURED_REPLY, c.Rep.ACK))
        client.data_to_send()
        client.set_meta_context("disk", ["base:allocation"])
    elif f["option"] == c.Opt.GO:
        client.go("disk")
    elif f["option"] == c.Opt.EXPORT_NAME:
        client.export_name(data.decode())
    return b"".join(client.data_to_send()), client


@pytest.mark.parametrize("vector", VECTORS["client"], ids=ids(VECTORS["client"]))
def test_client_vectors_encode(vector: dict[str, Any]) -> None:
    assert client_output(vector)[0] == unhex(vector["hex"])


def server_in(state: str) -> ServerConnection:
    server = ServerConnection()
    server.data_to_send()
    if state == "options":
        server.receive_data(wire.CLIENT_FLAGS.pack(3) + wire.option(c.Opt.STRUCTURED_REPLY))
        server.next_event()
    return server


@pytest.mark.parametrize("vector", VECTORS["client"], ids=ids(VECTORS["client"]))
def test_client_vectors_decode(vector: dict[str, Any]) -> None:
    f, kind, raw = vector["fields"], vector["kind"], unhex(vector["hex"])
    if kind == "client_flags":
        server = server_in("flags")
        server.receive_data(raw)
        server.next_event()
        assert server.negotiated.no_zeroes is bool(f["flags"] & 2)
    elif kind == "option":
        server = server_in("options")
        server.receive_data(raw)
        event = server.next_event()
        go = f["option"] in (c.Opt.GO, c.Opt.EXPORT_NAME)
        assert event == ExportQuery(f["option"], "disk", go)
    else:
        assert wire.REQUEST.unpack(raw) == (c.REQUEST_MAGIC, f["flags"], f["cmd"], f["cookie"],
                                            f["offset"], f["length"])
        server = server_in_transmission(True)
        server.receive_data(raw)
        event = server.next_event()
        if f["cmd"] == c.Cmd.DISC:
            assert isinstance(event, Disconnect)
        elif isinstance(event, Request):
            assert (event.cmd, event.flags, event.cookie, event.offset, event.length) == (
                f["cmd"], f["flags"], f["cookie"], f["offset"], f["length"])
        else:  # BLOCK_STATUS without contexts on that server: refused, cookie echoed
            (reply,) = server.data_to_send()
            assert int.from_bytes(reply[8:16], "big") == f["cookie"]
