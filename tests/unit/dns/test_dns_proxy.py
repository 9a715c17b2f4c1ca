"""netwrap.dns.proxy: the DNS proxy's core, driven with hand-written datagrams."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from netwrap.dns import proxy as dnsproxy
from netwrap.dns.proxy import Drop, Learn, LearnedName, SendToClient, SendUpstream

ip = ipaddress.ip_address

RESOLVER = ("192.0.2.53", 53)
CLIENT = ("127.0.0.1", 40000)

# The question "www.example.test, type A, class IN", as it appears in both messages.
QUESTION = (b"\x03www\x07example\x04test\x00"  # 18 bytes: offsets 12..29
            b"\x00\x01\x00\x01")  # QTYPE A, QCLASS IN

# A query, id 0xBEEF: flags 0x0100 (RD), one question, no records.
QUERY = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + QUESTION

# An answer without its id (the first two bytes): flags 0x8180 (QR, RD, RA),
# one question, two answers:
#   www.example.test CNAME edge.cdn.test, TTL 300;
#   edge.cdn.test A 203.0.113.5, TTL 60.
ANSWER_REST = (
    b"\x81\x80\x00\x01\x00\x02\x00\x00\x00\x00" + QUESTION
    + b"\xc0\x0c"  # owner: pointer to the question's name (offset 12)
    + b"\x00\x05\x00\x01\x00\x00\x01\x2c\x00\x0f"  # CNAME, IN, TTL 300, 15 bytes of data
    + b"\x04edge\x03cdn\x04test\x00"  # the target, at offset 46
    + b"\xc0\x2e"  # owner: pointer to the target's name (offset 46)
    + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04"  # A, IN, TTL 60, 4 bytes of data
    + b"\xcb\x00\x71\x05"  # 203.0.113.5
)


def answer(ident: int) -> bytes:
    return ident.to_bytes(2, "big") + ANSWER_REST


def forwarded(proxy: dnsproxy.DnsProxy, client=CLIENT, now: float = 0.0) -> SendUpstream:
    actions = proxy.query(QUERY, client, now)
    assert len(actions) == 1 and isinstance(actions[0], SendUpstream)
    return actions[0]


def test_a_query_goes_upstream_under_the_id_it_names():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    sent = forwarded(proxy)
    assert sent.data == sent.id.to_bytes(2, "big") + QUERY[2:]
    assert proxy.pending == 1 and not proxy.dropped


def test_the_answer_goes_back_to_the_client_under_the_clients_id():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    sent = forwarded(proxy)
    actions = proxy.answer(answer(sent.id), RESOLVER)
    assert actions[-1] == SendToClient(client=CLIENT, data=b"\xbe\xef" + ANSWER_REST)
    assert proxy.pending == 0 and not proxy.dropped


def test_learned_names_come_before_the_answer_with_the_smallest_ttl_of_the_chain():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    actions = proxy.answer(answer(forwarded(proxy).id), RESOLVER)
    assert actions[0] == Learn(names=(
        LearnedName(name="www.example.test", addresses=(ip("203.0.113.5"),), ttl=60),
        LearnedName(name="edge.cdn.test", addresses=(ip("203.0.113.5"),), ttl=60),
    ))
    assert isinstance(actions[1], SendToClient) and len(actions) == 2


def test_an_answer_for_an_unknown_id_is_dropped_and_counted():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    sent = forwarded(proxy)
    assert proxy.answer(answer(sent.id ^ 1), RESOLVER) == [Drop(reason=dnsproxy.UNKNOWN_ID)]
    assert proxy.dropped == {dnsproxy.UNKNOWN_ID: 1} and proxy.pending == 1


def test_an_answer_from_elsewhere_is_dropped_and_the_query_still_waits():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    sent = forwarded(proxy)
    for sender in [("192.0.2.99", 53), ("192.0.2.53", 5353), ("not an address", 53)]:
        assert proxy.answer(answer(sent.id), sender) == [Drop(reason=dnsproxy.NOT_FROM_RESOLVER)]
    assert proxy.dropped == {dnsproxy.NOT_FROM_RESOLVER: 3}
    assert proxy.answer(answer(sent.id), RESOLVER)[-1].data == b"\xbe\xef" + ANSWER_REST


def test_ipv6_resolver_matches_the_socket_address_however_it_is_spelled():
    proxy = dnsproxy.DnsProxy(resolver=("2001:db8::53", 53))
    sent = forwarded(proxy, client=("::1", 40000, 0, 0))
    actions = proxy.answer(answer(sent.id), ("2001:db8:0:0::53", 53, 0, 0))  # recvfrom's 4-tuple
    assert actions[-1] == SendToClient(client=("::1", 40000, 0, 0), data=b"\xbe\xef" + ANSWER_REST)


def test_a_truncated_answer_is_dropped_and_counted():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    sent = forwarded(proxy)
    short = answer(sent.id)[:11]  # one byte short of a header
    assert proxy.answer(short, RESOLVER) == [Drop(reason=dnsproxy.TRUNCATED)]
    assert proxy.dropped == {dnsproxy.TRUNCATED: 1} and proxy.pending == 1


def test_an_answer_cut_after_its_header_is_passed_on_unread():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    sent = forwarded(proxy)
    cut = answer(sent.id)[:40]  # inside the first record
    assert proxy.answer(cut, RESOLVER) == [SendToClient(client=CLIENT, data=b"\xbe\xef" + cut[2:])]
    assert proxy.unreadable == 1


def test_a_query_echoed_back_by_the_resolver_is_not_an_answer():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    sent = forwarded(proxy)
    assert proxy.answer(sent.data, RESOLVER) == [Drop(reason=dnsproxy.NOT_AN_ANSWER)]


def test_what_is_not_a_query_is_dropped_and_counted():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    for data in [b"", QUERY[:11], b"\xbe\xef" + ANSWER_REST]:  # empty, short, a response
        assert proxy.query(data, CLIENT, 0.0) == [Drop(reason=dnsproxy.NOT_A_QUERY)]
    assert proxy.dropped == {dnsproxy.NOT_A_QUERY: 3} and proxy.pending == 0


@given(st.binary(max_size=80), st.binary(max_size=80))
def test_any_bytes_are_handled_without_an_exception(query, reply):
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    proxy.query(query, CLIENT, 0.0)
    proxy.answer(reply, RESOLVER)
    for sent in [a for a in proxy.query(QUERY, CLIENT, 0.0) if isinstance(a, SendUpstream)]:
        proxy.answer(sent.id.to_bytes(2, "big") + reply, RESOLVER)


def test_pending_queries_are_bounded_and_the_oldest_goes_first():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    first = forwarded(proxy, client=("127.0.0.1", 1))
    for port in range(2, dnsproxy.MAX_PENDING + 1):
        forwarded(proxy, client=("127.0.0.1", port))
    assert proxy.pending == dnsproxy.MAX_PENDING and not proxy.dropped
    actions = proxy.query(QUERY, ("127.0.0.1", 60000), 0.0)
    assert actions[0] == Drop(reason=dnsproxy.EVICTED) and isinstance(actions[1], SendUpstream)
    assert proxy.pending == dnsproxy.MAX_PENDING and proxy.dropped == {dnsproxy.EVICTED: 1}
    assert proxy.answer(answer(first.id), RESOLVER) == [Drop(reason=dnsproxy.UNKNOWN_ID)]
    assert proxy.answer(answer(actions[1].id), RESOLVER)[-1].client == ("127.0.0.1", 60000)


def test_upstream_ids_are_random():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    ids = [forwarded(proxy).id for _ in range(1000)]
    assert len(set(ids)) == 1000  # pending ids never collide
    steps = sum(1 for a, b in zip(ids, ids[1:]) if (b - a) & 0xFFFF == 1)
    assert steps < 10  # a counter would make 999
    assert max(ids) - min(ids) > 1 << 14  # spread over the id space, not a narrow window


def test_unanswered_queries_expire():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    sent = forwarded(proxy, now=100.0)
    assert proxy.next_deadline() == 100.0 + dnsproxy.PENDING_TIMEOUT
    assert proxy.expire(100.0 + dnsproxy.PENDING_TIMEOUT - 0.1) == 0
    assert proxy.expire(100.0 + dnsproxy.PENDING_TIMEOUT) == 1
    assert proxy.pending == 0 and proxy.next_deadline() is None
    assert proxy.answer(answer(sent.id), RESOLVER) == [Drop(reason=dnsproxy.UNKNOWN_ID)]


def test_a_query_that_cannot_be_sent_gets_servfail_at_once():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    sent = forwarded(proxy)
    # id 0xBEEF; flags 0x8182: QR, RD copied from the query, RA, rcode 2 (SERVFAIL); the question kept.
    servfail = b"\xbe\xef\x81\x82\x00\x01\x00\x00\x00\x00\x00\x00" + QUESTION
    assert proxy.upstream_failed(sent) == [SendToClient(client=CLIENT, data=servfail)]
    assert proxy.pending == 0 and proxy.upstream_failed(sent) == []
