"""netwrap.dns.proxy_service: the DNS proxy's sockets and thread, on the host's loopback."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest

from netwrap.dns.proxy_service import DnsProxyService
from privileges import needs_loopback
LOOPBACK = ipaddress.ip_address("127.0.0.1")

QUESTION = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"  # www.example.test, A, IN
# A query, id 0xBEEF: flags 0x0100 (RD), one question.
QUERY = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + QUESTION
# An answer without its id: flags 0x8180, one question, one record:
# www.example.test (a pointer to offset 12) A 203.0.113.5, TTL 60.
ANSWER_REST = (b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + QUESTION
               + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xcb\x00\x71\x05")


def open_socket(family, type, *, bind=None, options=()):
    s = socket.socket(family, type)
    for level, name, value in options:
        s.setsockopt(level, name, value)
    if bind is not None:
        s.bind(bind)
    return s


@pytest.fixture
def resolver():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    yield s
    s.close()


@pytest.fixture
def client():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    yield s
    s.close()


@needs_loopback
def test_a_query_is_answered_through_the_resolver_after_the_names_are_learned(resolver, client):
    learned = []

    def on_learn(action):
        time.sleep(0.2)  # were the answer sent first, the client would have it before this returns
        learned.append(action)

    service = DnsProxyService(open_socket=open_socket, mark=None, on_learn=on_learn)
    port = service.add(LOOPBACK, port=resolver.getsockname()[1])
    service.start()
    try:
        client.sendto(QUERY, ("127.0.0.1", port))
        query, proxy_address = resolver.recvfrom(512)
        assert query[2:] == QUERY[2:]
        resolver.sendto(query[:2] + ANSWER_REST, proxy_address)
        reply, source = client.recvfrom(512)
        assert reply == b"\xbe\xef" + ANSWER_REST and source == ("127.0.0.1", port)
        assert [(n.name, n.addresses) for n in learned[0].names] == [
            ("www.example.test", (ipaddress.ip_address("203.0.113.5"),))]
    finally:
        service.stop(time.monotonic() + 5)
    assert service.errors == []


def test_stop_is_idempotent_and_closes_the_sockets(resolver):
    service = DnsProxyService(open_socket=open_socket, mark=None, on_learn=lambda action: None)
    service.add(LOOPBACK, port=resolver.getsockname()[1])
    service.start()
    endpoint = service.endpoints[0]
    started = time.monotonic()
    service.stop(started + 5)
    service.stop(started + 5)
    assert time.monotonic() - started < 1
    assert endpoint.listen.fileno() == -1 and endpoint.upstream.fileno() == -1
    assert service.errors == []


@needs_loopback
def test_stop_gives_up_on_a_stuck_thread_at_the_deadline(resolver, client):
    release = threading.Event()
    service = DnsProxyService(open_socket=open_socket, mark=None, on_learn=lambda action: release.wait(30))
    port = service.add(LOOPBACK, port=resolver.getsockname()[1])
    service.start()
    try:
        client.sendto(QUERY, ("127.0.0.1", port))
        query, proxy_address = resolver.recvfrom(512)
        resolver.sendto(query[:2] + ANSWER_REST, proxy_address)
        time.sleep(0.2)  # the thread is now waiting in on_learn
        started = time.monotonic()
        service.stop(started + 0.3)
        assert 0.25 < time.monotonic() - started < 1.5
        assert service.errors == ["the DNS proxy did not stop in time"]
    finally:
        release.set()
