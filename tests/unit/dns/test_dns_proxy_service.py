"""netwrap.dns.proxy_service: the DNS proxy's sockets and threads, on the host's loopback.

The sandbox's transparent listeners are plain loopback listeners here (a
datagram's original destination is then the listener's own address), the
answers go back through real raw sockets (root only), and the upstream
servers are small ones this test runs.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time

import pytest

from netwrap.dns import stream
from netwrap.dns.proxy_service import DnsProxyService, raw_reply
from privileges import needs_loopback

QUESTION = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"  # www.example.test, A, IN
# A query, id 0xBEEF: flags 0x0100 (RD), one question.
QUERY = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + QUESTION
# An answer without its id: flags 0x8180, one question, one record:
# www.example.test (a pointer to offset 12) A 203.0.113.5, TTL 60.
ANSWER_REST = (b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + QUESTION
               + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xcb\x00\x71\x05")
LEARNED = [("www.example.test", (ipaddress.ip_address("203.0.113.5"),))]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need CAP_NET_RAW")


def _listeners():
    udp = {socket.AF_INET: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
           socket.AF_INET6: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)}
    tcp = {socket.AF_INET: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
           socket.AF_INET6: socket.socket(socket.AF_INET6, socket.SOCK_STREAM)}
    for family, s in udp.items():
        s.setsockopt(socket.SOL_IP if family == socket.AF_INET else socket.IPPROTO_IPV6,
                     20 if family == socket.AF_INET else 74, 1)  # IP(V6)_RECVORIGDSTADDR
        s.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
    for family, s in tcp.items():
        s.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        s.listen(8)
    return udp, tcp


@pytest.fixture
def service_parts():
    udp, tcp = _listeners()
    raw = {family: socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) for family in udp} \
        if os.geteuid() == 0 else {}
    yield udp, tcp, raw
    for s in (*udp.values(), *tcp.values(), *raw.values()):
        s.close()


@needs_root
@needs_loopback
def test_a_udp_query_in_one_family_is_answered_by_a_server_of_the_other(service_parts):
    """The command asks ::1 (IPv6); the chosen server is IPv4; the answer comes
    back from the address and port the command asked, after the names were learned."""
    udp, tcp, raw = service_parts
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    learned, chosen = [], []

    def on_learn(action):
        time.sleep(0.2)  # were the answer sent first, the client would have it before this returns
        learned.append(action)

    def choose(asked):
        chosen.append(asked)
        return "127.0.0.1"

    service = DnsProxyService(udp=udp, tcp=tcp, reply=raw_reply(raw), choose=choose, on_learn=on_learn,
                              upstream_port=server.getsockname()[1])
    service.start()
    listener = udp[socket.AF_INET6].getsockname()
    with server, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        try:
            client.sendto(QUERY, listener[:2])
            query, proxy_address = server.recvfrom(512)
            assert query[2:] == QUERY[2:]
            server.sendto(query[:2] + ANSWER_REST, proxy_address)
            reply, source = client.recvfrom(512)
        finally:
            service.stop(time.monotonic() + 5)
    assert reply == b"\xbe\xef" + ANSWER_REST
    assert source[:2] == listener[:2]
    assert chosen == ["::1"]
    assert [(n.name, n.addresses) for n in learned[0].names] == LEARNED
    assert service.errors == []


@needs_root
@needs_loopback
def test_an_answer_from_another_address_is_not_taken(service_parts):
    udp, tcp, raw = service_parts
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    service = DnsProxyService(udp=udp, tcp=tcp, reply=raw_reply(raw), choose=lambda asked: "127.0.0.1",
                              on_learn=lambda action: None, upstream_port=server.getsockname()[1])
    service.start()
    with server, forger, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.5)
        try:
            client.sendto(QUERY, udp[socket.AF_INET].getsockname())
            query, proxy_address = server.recvfrom(512)
            forger.sendto(query[:2] + ANSWER_REST, proxy_address)
            with pytest.raises(socket.timeout):
                client.recvfrom(512)
        finally:
            service.stop(time.monotonic() + 5)
    assert service.dropped == 1


@needs_loopback
def test_tcp_pipelined_queries_are_relayed_and_every_answer_is_learned(service_parts):
    udp, tcp, _ = service_parts
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)
    got_queries = []

    def serve():
        conn, _ = server.accept()
        with conn:
            deframer = stream.Deframer()
            while len(got_queries) < 2:
                got_queries.extend(deframer.feed(conn.recv(4096)))
            # Both answers, the second split across two writes.
            wire = b"".join(stream.frame(q[:2] + ANSWER_REST) for q in got_queries)
            conn.sendall(wire[:-7])
            time.sleep(0.1)
            conn.sendall(wire[-7:])
            time.sleep(0.5)

    thread = threading.Thread(target=serve)
    thread.start()
    learned, chosen = [], []
    service = DnsProxyService(udp=udp, tcp=tcp, reply=lambda *a: None,
                              choose=lambda asked: chosen.append(asked) or "127.0.0.1",
                              on_learn=learned.append, upstream_port=server.getsockname()[1])
    service.start()
    second = b"\x00\x07" + QUERY[2:]
    try:
        with socket.create_connection(tcp[socket.AF_INET6].getsockname()[:2], timeout=5) as client:
            client.sendall(stream.frame(QUERY) + stream.frame(second))
            deframer = stream.Deframer()
            answers = []
            while len(answers) < 2:
                answers += deframer.feed(client.recv(4096))
    finally:
        thread.join(5)
        server.close()
        service.stop(time.monotonic() + 5)
    assert got_queries == [QUERY, second]
    assert answers == [b"\xbe\xef" + ANSWER_REST, b"\x00\x07" + ANSWER_REST]
    assert chosen == ["::1"]
    assert [[(n.name, n.addresses) for n in action.names] for action in learned] == [LEARNED, LEARNED]


@needs_loopback
def test_stop_is_idempotent_and_closes_its_upstream_sockets(service_parts):
    udp, tcp, _ = service_parts
    service = DnsProxyService(udp=udp, tcp=tcp, reply=lambda *a: None, choose=lambda asked: asked,
                              on_learn=lambda action: None)
    service.start()
    upstream = [s for pool in service._upstream.values() for s in pool]
    started = time.monotonic()
    service.stop(started + 5)
    service.stop(started + 5)
    assert time.monotonic() - started < 1
    assert upstream and all(s.fileno() == -1 for s in upstream)
    assert service.errors == []


@needs_loopback
def test_raw_reply_builds_a_datagram_the_kernel_delivers():
    if os.geteuid() != 0:
        pytest.skip("raw sockets need CAP_NET_RAW")
    raw = {socket.AF_INET: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)}
    with raw[socket.AF_INET], socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        client.settimeout(5)
        raw_reply(raw)(("127.0.0.1", 53), client.getsockname(), b"payload")
        data, source = client.recvfrom(64)  # a bad checksum would be dropped by the kernel
    assert (data, source) == (b"payload", ("127.0.0.1", 53))


@needs_loopback
def test_upstream_queries_leave_from_random_ports_of_the_pool(service_parts):
    udp, tcp, _ = service_parts
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    service = DnsProxyService(udp=udp, tcp=tcp, reply=lambda *a: None, choose=lambda asked: "127.0.0.1",
                              on_learn=lambda action: None, upstream_port=server.getsockname()[1])
    service.start()
    ports = []
    with server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        try:
            for i in range(300):
                # A new id each time: the core would take a repeated one for a retry.
                client.sendto(i.to_bytes(2, "big") + QUERY[2:], udp[socket.AF_INET].getsockname())
                ports.append(server.recvfrom(512)[1][1])
        finally:
            service.stop(time.monotonic() + 5)
    # 16 sockets, each query from one drawn uniformly: over 300 queries every
    # one is used (a miss has odds of 16 * (15/16)**300, about 6e-8), none
    # carries a third of them, and consecutive queries mostly differ (1 in 16 repeats).
    assert len(set(ports)) == 16
    assert max(ports.count(p) for p in set(ports)) < 100
    assert sum(1 for a, b in zip(ports, ports[1:]) if a == b) < 60


@needs_root
@needs_loopback
def test_a_refused_name_is_answered_here_and_never_asked(service_parts):
    udp, tcp, raw = service_parts
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.5)
    service = DnsProxyService(udp=udp, tcp=tcp, reply=raw_reply(raw), choose=lambda asked: "127.0.0.1",
                              on_learn=lambda action: None, upstream_port=server.getsockname()[1],
                              refuse=lambda name: name != "allowed.example.test")
    service.start()
    with server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        try:
            client.sendto(QUERY, udp[socket.AF_INET].getsockname())
            reply, _ = client.recvfrom(512)
            with pytest.raises(socket.timeout):
                server.recvfrom(512)  # www.example.test never reached the server
        finally:
            service.stop(time.monotonic() + 5)
    # The client's id, QR set, RCODE 5 (REFUSED); the question echoed.
    assert reply[:2] == b"\xbe\xef" and reply[2] & 0x80 and reply[3] & 0x0F == 5
    assert QUESTION in reply
