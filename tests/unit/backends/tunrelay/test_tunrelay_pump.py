"""The splice pump over real loopback TCP connections (no privileges needed)."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import threading

import pytest

from netwrap.backends.tunrelay.pump import PUMP_EVENTS_HINT, PipePool, Pump
from privileges import needs_loopback

pytestmark = needs_loopback


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(our end, the far end) of a loopback TCP connection."""
    with socket.socket() as lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        far = socket.create_connection(lst.getsockname())
        ours, _ = lst.accept()
    ours.setblocking(False)
    return ours, far


def drive(pump: Pump, timeout: float = 10.0) -> None:
    """A tiny edge-triggered loop like the engine's, until the pump closes."""
    ep = select.epoll()
    for s in (pump.a, pump.b):
        ep.register(s.fileno(), PUMP_EVENTS_HINT)
    try:
        more = pump.run()
        deadline = timeout
        while not pump.closed:
            events = ep.poll(0 if more else 1.0)
            if not events and not more:
                deadline -= 1.0
                assert deadline > 0, "pump stalled"
            more = pump.run()
    finally:
        ep.close()


def test_bytes_both_ways_with_half_close() -> None:
    a, child = tcp_pair()
    b, host = tcp_pair()
    pool = PipePool(keep=2)
    pump = Pump(a, b, pool)
    up = os.urandom(3 << 20)
    down = os.urandom(5 << 20)
    got: dict[str, bytes] = {}

    def talk(sock: socket.socket, data: bytes, name: str) -> None:
        sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
        sender.join()
        got[name] = b"".join(chunks)
        sock.close()

    # each end sends its data and records what it received
    threads = [threading.Thread(target=talk, args=(child, up, "child-got")),
               threading.Thread(target=talk, args=(host, down, "host-got"))]
    for t in threads:
        t.start()
    drive(pump)
    for t in threads:
        t.join(10)
    assert hashlib.sha256(got["host-got"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got["child-got"]).digest() == hashlib.sha256(down).digest()
    assert (pump.bytes_up, pump.bytes_down) == (len(up), len(down))
    assert pool.live == 0  # every pipe came back
    pool.close()


def test_one_side_reset_resets_the_other() -> None:
    a, child = tcp_pair()
    b, host = tcp_pair()
    pump = Pump(a, b, PipePool())
    host.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    host.close()  # RST towards b
    child.settimeout(5)
    drive(pump)
    with pytest.raises(ConnectionResetError):
        while child.recv(100):
            pass
    child.close()


def test_a_full_destination_stops_reading_the_source() -> None:
    """Back-pressure: with nobody reading the child, the pump holds at most
    one pipe of data and leaves the rest in the host's socket."""
    a, child = tcp_pair()
    b, host = tcp_pair()
    pool = PipePool(size=65536)
    pump = Pump(a, b, pool)
    host.setblocking(False)
    sent = 0
    try:
        while sent < 64 << 20:
            sent += host.send(b"x" * 65536)
    except BlockingIOError:
        pass
    for _ in range(50):
        pump.run()
    assert pump.buffered <= 65536 * 4  # a pipe's worth (the kernel rounds sizes up)
    assert not pump.closed
    pump.abort()
    for s in (child, host):
        s.close()
    assert pool.live == 0
