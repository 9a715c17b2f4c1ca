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


# --- the name filter (--dns-allowed-only) ---------------------------------------------------------

ALLOWED = {"www.example.test"}


def allowed_only() -> dnsproxy.DnsProxy:
    return dnsproxy.DnsProxy(resolver=RESOLVER, refuse=lambda name: name not in ALLOWED)


# "other.example.test, type A, class IN" and a query for it, id 0x1234, flags 0x0100 (RD).
OTHER_QUESTION = b"\x05other\x07example\x04test\x00\x00\x01\x00\x01"
OTHER_QUERY = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + OTHER_QUESTION


def test_a_name_outside_the_allow_list_is_refused_without_going_upstream():
    proxy = allowed_only()
    # id 0x1234 (the client's), flags 0x8185: QR, RD copied, RA, rcode 5 (REFUSED);
    # one question (echoed), no records.
    refused = b"\x12\x34\x81\x85\x00\x01\x00\x00\x00\x00\x00\x00" + OTHER_QUESTION
    assert proxy.query(OTHER_QUERY, CLIENT, 0.0) == [SendToClient(client=CLIENT, data=refused)]
    assert proxy.pending == 0 and proxy.refused == 1 and not proxy.dropped


def test_an_allowed_name_goes_upstream_and_its_cname_chain_comes_back():
    proxy = allowed_only()
    sent = forwarded(proxy)
    actions = proxy.answer(answer(sent.id), RESOLVER)
    # The chain leaves the allow list (edge.cdn.test): the answer is passed on whole.
    assert actions[-1] == SendToClient(client=CLIENT, data=b"\xbe\xef" + ANSWER_REST)
    assert proxy.refused == 0


def test_the_filter_sees_names_in_lower_case_without_the_root_dot():
    proxy = allowed_only()
    query = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03WwW\x07ExAmPlE\x04TEST\x00\x00\x01\x00\x01"
    assert isinstance(proxy.query(query, CLIENT, 0.0)[0], SendUpstream)


def test_a_label_holding_a_dot_does_not_pass_for_the_allowed_name():
    proxy = allowed_only()
    # Two labels "www.example" and "test": the text reads www.example.test, the name is another.
    question = b"\x0bwww.example\x04test\x00\x00\x01\x00\x01"
    query = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + question
    assert proxy.query(query, CLIENT, 0.0) == [
        SendToClient(client=CLIENT, data=b"\x00\x07\x81\x85\x00\x01\x00\x00\x00\x00\x00\x00" + question)]
    assert proxy.pending == 0


def test_a_compressed_question_is_refused():
    proxy = allowed_only()
    # The question's name is a pointer to offset 12, itself: never forwarded.
    query = b"\x00\x08\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
    actions = proxy.query(query, CLIENT, 0.0)
    assert proxy.pending == 0
    assert actions == [Drop(reason=dnsproxy.NO_QUESTION)]


def test_a_query_with_two_questions_is_dropped_under_the_filter():
    proxy = allowed_only()
    query = b"\x00\x09\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00" + QUESTION + OTHER_QUESTION
    assert proxy.query(query, CLIENT, 0.0) == [Drop(reason=dnsproxy.NO_QUESTION)]
    assert proxy.pending == 0 and proxy.dropped == {dnsproxy.NO_QUESTION: 1}


@given(st.binary(max_size=300))
def test_under_the_filter_only_the_allowed_name_goes_upstream(query):
    proxy = allowed_only()
    for action in proxy.query(query, CLIENT, 0.0):
        if isinstance(action, SendUpstream):
            assert action.data[12:30].lower() == QUESTION[:18]


# --- flood bounds -----------------------------------------------------------------------------------


def test_the_bounds_are_the_declared_numbers():
    # Written down here: a change to a bound is a change to this test and to the README.
    assert dnsproxy.MAX_PENDING == 4096
    assert dnsproxy.MAX_MESSAGE == 65535
    assert dnsproxy.MAX_LEARNED_NAMES == 16
    assert dnsproxy.MAX_LEARNED_ADDRESSES == 64


def test_a_flood_of_distinct_queries_keeps_pending_at_its_bound():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER, max_pending=100)
    for i in range(1000):
        proxy.query(QUERY, ("127.0.0.1", 1000 + i), 0.0)
    assert proxy.pending == 100 and proxy.dropped == {dnsproxy.EVICTED: 900}


def test_oversized_messages_are_dropped_unread():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    big = QUERY + b"\x00" * 65536
    assert proxy.query(big, CLIENT, 0.0) == [Drop(reason=dnsproxy.TOO_LARGE)]
    sent = forwarded(proxy)
    assert proxy.answer(answer(sent.id) + b"\x00" * 65536, RESOLVER) == [Drop(reason=dnsproxy.TOO_LARGE)]
    assert proxy.pending == 1


def _a_record(owner: bytes, address: bytes, ttl: int = 30) -> bytes:
    return owner + b"\x00\x01\x00\x01" + ttl.to_bytes(4, "big") + b"\x00\x04" + address


def test_addresses_learned_per_name_are_bounded():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    sent = forwarded(proxy)
    # 100 A records for www.example.test (owner: pointer to offset 12), 10.0.0.0 .. 10.0.0.99.
    records = b"".join(_a_record(b"\xc0\x0c", bytes([10, 0, 0, i])) for i in range(100))
    reply = sent.id.to_bytes(2, "big") + b"\x81\x80\x00\x01\x00\x64\x00\x00\x00\x00" + QUESTION + records
    learn = proxy.answer(reply, RESOLVER)[0]
    assert isinstance(learn, Learn) and len(learn.names) == 1
    assert learn.names[0].addresses == tuple(ip(f"10.0.0.{i}") for i in range(64))


def test_names_learned_from_one_cname_chain_are_bounded():
    proxy = dnsproxy.DnsProxy(resolver=RESOLVER)
    sent = forwarded(proxy)
    # www.example.test CNAME n1.test, n1.test CNAME n2.test ... n29.test CNAME n30.test;
    # every name also has an A record 192.0.2.1 (addresses_of follows the chain).
    def name(i: int) -> bytes:
        label = f"n{i}".encode()
        return bytes([len(label)]) + label + b"\x04test\x00"
    records = b""
    owner = b"\xc0\x0c"
    for i in range(1, 31):
        target = name(i)
        records += owner + b"\x00\x05\x00\x01\x00\x00\x00\x3c" + len(target).to_bytes(2, "big") + target
        records += _a_record(owner, b"\xc0\x00\x02\x01")
        owner = target
    reply = (sent.id.to_bytes(2, "big") + b"\x81\x80\x00\x01" + (60).to_bytes(2, "big") + b"\x00\x00\x00\x00"
             + QUESTION + records)
    learn = proxy.answer(reply, RESOLVER)[0]
    assert isinstance(learn, Learn)
    assert [n.name for n in learn.names] == ["www.example.test"] + [f"n{i}.test" for i in range(1, 16)]
