"""netwrap.dns.message: the DNS proxy reads answers it did not write."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netwrap.dns import message as dnsmsg

ip = ipaddress.ip_address


def name(text: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in text.split(".")) + b"\0"


def query(qname: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 1) + name(qname) + struct.pack("!HH", qtype, 1) + (
        b"\0\0\x29\x10\0\0\0\0\0\0\0")  # an EDNS OPT record, as resolvers send


def response(qname: str, records: list[tuple[bytes, int, bytes]], ident: int = 0x1234, rcode: int = 0) -> bytes:
    head = struct.pack("!HHHHHH", ident, 0x8180 | rcode, 1, len(records), 0, 0)
    body = name(qname) + struct.pack("!HH", 1, 1)
    for owner, rtype, rdata in records:
        body += owner + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata
    return head + body


QNAME_PTR = b"\xc0\x0c"  # compression pointer to the question's name


def test_a_and_aaaa_with_compression():
    msg = response("WWW.Example.TEST", [(QNAME_PTR, 1, ip("93.184.215.14").packed),
                                        (QNAME_PTR, 28, ip("2606:4700::1111").packed)])
    answer = dnsmsg.parse_answer(msg)
    assert answer.id == 0x1234 and answer.rcode == 0 and answer.qname == "www.example.test"
    assert answer.addresses_of("www.example.test") == (ip("93.184.215.14"), ip("2606:4700::1111"))
    assert answer.chain() == ["www.example.test"]


def test_cname_chain():
    target = name("edge.cdn.test")
    msg = response("www.example.test", [(QNAME_PTR, 5, target), (target, 1, ip("203.0.113.5").packed)])
    answer = dnsmsg.parse_answer(msg)
    assert answer.chain() == ["www.example.test", "edge.cdn.test"]
    assert answer.addresses_of("www.example.test") == (ip("203.0.113.5"),)
    assert answer.addresses_of("other.test") == ()


def test_cname_loop_ends():
    a, b = name("a.test"), name("b.test")
    msg = response("a.test", [(a, 5, b), (b, 5, a)])
    answer = dnsmsg.parse_answer(msg)
    assert answer.chain() == ["a.test", "b.test"] and answer.addresses_of("a.test") == ()


def test_ids_and_kinds():
    q = query("www.example.test")
    assert dnsmsg.is_query(q) and dnsmsg.message_id(q) == 0x1234
    assert dnsmsg.message_id(dnsmsg.with_id(q, 7)) == 7 and dnsmsg.with_id(q, 7)[2:] == q[2:]
    with pytest.raises(dnsmsg.DNSFormatError):
        dnsmsg.parse_answer(q)  # a query is not an answer


def test_servfail_keeps_the_question():
    q = query("www.example.test", qtype=28)
    reply = dnsmsg.servfail(q)
    answer = dnsmsg.parse_answer(reply)
    assert answer.id == 0x1234 and answer.rcode == 2 and answer.qname == "www.example.test"
    assert not dnsmsg.is_query(reply)
    assert dnsmsg.servfail(b"\0" * 5) is None and dnsmsg.servfail(reply) is None


@pytest.mark.parametrize("message", [
    b"", b"\0" * 11,
    struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\x05abc",  # label past the end
    struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c",  # pointer to itself
    struct.pack("!HHHHHH", 1, 0x8180, 0, 1, 0, 0) + b"\0" + struct.pack("!HHIH", 1, 1, 0, 50),
])
def test_malformed(message):
    with pytest.raises(dnsmsg.DNSFormatError):
        dnsmsg.parse_answer(message)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_format_error(data):
    try:
        answer = dnsmsg.parse_answer(b"\0\0\x81\x80" + data)
    except dnsmsg.DNSFormatError:
        return
    # The fixed header bytes decide these, whatever follows them.
    assert (answer.id, answer.rcode) == (0, 0)
    chain = answer.chain()
    assert len(chain) == len(set(chain))  # CNAME loops are cut
    assert chain[:1] == ([answer.qname] if answer.qname is not None else [])
    for name, addresses in answer.addresses.items():
        assert isinstance(name, str)
        assert all(isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)) for a in addresses)
    if answer.qname is not None:
        found = answer.addresses_of(answer.qname)
        assert len(found) == len(set(found))
        assert set(found) <= {a for name in chain for a in answer.addresses.get(name, ())}


def test_ttls_along_a_cname_chain():
    # www.example.test CNAME edge.cdn.test (TTL 300); edge.cdn.test A 203.0.113.5 (TTL 60)
    # and A 203.0.113.6 (TTL 0x80000001: top bit set, read as 0 per RFC 2181 section 8).
    target = name("edge.cdn.test")
    msg = (b"\x00\x01\x81\x80\x00\x01\x00\x02\x00\x00\x00\x00" + name("www.example.test") + b"\x00\x01\x00\x01"
           + QNAME_PTR + b"\x00\x05\x00\x01\x00\x00\x01\x2c" + len(target).to_bytes(2, "big") + target
           + target + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([203, 0, 113, 5]))
    answer = dnsmsg.parse_answer(msg)
    assert answer.ttl_of("www.example.test") == 60 and answer.ttl_of("edge.cdn.test") == 60
    assert answer.ttl_of("other.test") is None
    late = dnsmsg.parse_answer(msg[:7] + b"\x03" + msg[8:]
                               + target + b"\x00\x01\x00\x01\x80\x00\x00\x01\x00\x04" + bytes([203, 0, 113, 6]))
    assert late.ttl_of("edge.cdn.test") == 0 and late.ttl_of("www.example.test") == 0


def test_build_query_is_a_recursive_in_question():
    # Written out by hand: id, flags RD, 1 question; 3www7example4test0; AAAA, IN.
    assert dnsmsg.build_query(0xBEEF, "www.example.test.", 28) == (
        b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        b"\x03www\x07example\x04test\x00\x00\x1c\x00\x01")


@pytest.mark.parametrize("bad", ["a..b", "x" * 64 + ".test", "caf\u00e9.test", ".".join(["abcdefg"] * 40)])
def test_build_query_refuses_names_dns_cannot_carry(bad):
    with pytest.raises(ValueError):
        dnsmsg.build_query(1, bad, 1)
