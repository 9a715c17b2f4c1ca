"""netwrap.dns.lookup against a DNS server on loopback that this test runs."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading

import pytest

from netwrap.dns import lookup
from privileges import needs_loopback


def _name(text: str) -> bytes:
    return b"".join(bytes([len(l)]) + l.encode() for l in text.split(".")) + b"\0"


def _serve(sock: socket.socket, answers: dict[int, list[bytes]], seen: list, count: int,
           spoil: bool = False) -> None:
    """Answer `count` queries: qtype -> record data list (TTL 60, owner = the question)."""
    for _ in range(count):
        data, peer = sock.recvfrom(4096)
        ident, = struct.unpack_from("!H", data)
        end = data.index(b"\0", 12) + 1
        qtype, = struct.unpack_from("!H", data, end)
        seen.append((qtype, data[12:end]))
        records = answers.get(qtype, [])
        if spoil:  # first a reply under another id, which must be ignored
            sock.sendto(struct.pack("!HHHHHH", ident ^ 1, 0x8180, 1, 0, 0, 0) + data[12:end + 4], peer)
        reply = struct.pack("!HHHHHH", ident, 0x8180, 1, len(records), 0, 0) + data[12:end + 4]
        for rdata in records:
            reply += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
        sock.sendto(reply, peer)


@needs_loopback
@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_asks_the_server_for_a_and_aaaa(family, host):
    server = socket.socket(family, socket.SOCK_DGRAM)
    server.bind((host, 0))
    seen: list = []
    answers = {1: [bytes([192, 0, 2, 7])], 28: [ipaddress.IPv6Address("2001:db8::7").packed]}
    t = threading.Thread(target=_serve, args=(server, answers, seen, 2, True))
    t.start()
    try:
        got = lookup.addresses(host, "Host.Example.TEST.", port=server.getsockname()[1], timeout=5)
    finally:
        t.join(5)
        server.close()
    assert got == {ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::7")}
    assert sorted(seen) == [(1, _name("host.example.test")), (28, _name("host.example.test"))]


def test_no_answer_is_an_error_in_time():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    with server, pytest.raises(OSError):
        lookup.addresses("127.0.0.1", "x.test", port=server.getsockname()[1], timeout=0.3)
