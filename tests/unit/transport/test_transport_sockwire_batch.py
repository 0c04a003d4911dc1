"""SocketWire.send_soon: replies of one loop turn leave in one sendmsg, in order."""

import asyncio
import socket

from blockyard.transport.sockwire import SocketWire


def _wire(sock: socket.socket, closed: list[object]) -> SocketWire:
    loop = asyncio.get_running_loop()
    return SocketWire(sock, loop, lambda _n: memoryview(bytearray(1)), lambda _n: None,
                      closed.append)


def _recv_all(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        out += sock.recv(n - len(out))
    return out


async def test_batch_goes_out_once_at_the_end_of_the_turn() -> None:
    a, b = socket.socketpair()
    calls = []
    wire = _wire(a, [])
    real = wire._sendmsg
    wire._sendmsg = lambda items, flags: calls.append(len(items)) or real(items, flags)  # type: ignore[method-assign]
    for i in range(5):
        wire.send_soon([b"%d" % i, b"-"])
    assert calls == []  # nothing before the turn ends
    await asyncio.sleep(0)
    assert calls == [10]
    assert _recv_all(b, 10) == b"0-1-2-3-4-"
    wire.close()
    b.close()


async def test_a_direct_send_takes_the_batch_first() -> None:
    a, b = socket.socketpair()
    wire = _wire(a, [])
    wire.send_soon([b"early"])
    wire.send([b"later"])
    assert _recv_all(b, 10) == b"earlylater"
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    wire.close()
    b.settimeout(1)
    assert b.recv(10) == b""
    b.close()


async def test_flush_and_close_sends_the_batch() -> None:
    a, b = socket.socketpair()
    closed: list[object] = []
    wire = _wire(a, closed)
    wire.send_soon([b"last"])
    wire.flush_and_close()
    assert closed == [None]
    b.settimeout(1)
    assert _recv_all(b, 4) == b"last"
    b.close()
