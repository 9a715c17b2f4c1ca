"""The fast path's SYN gate: hold, release, refuse, bound, expire."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from netwrap.backends.tunrelay.counters import Drop, R
from netwrap.backends.tunrelay.nat import REJECT, Verdict
from netwrap.backends.tunrelay.packets import Packet, parse_frame
from netwrap.backends.tunrelay.syngate import Connect, SynGate

from _tr_ref import A4, A6, ACK, D4, D6, ICMP, RST, SYN, l4_ok, ip_ok, tcp_packet, vnet_hdr, with_partial


def frame(src=A4, dst=D4, sport=40000, dport=80, flags=SYN, seq=1000, ack=0, partial=False) -> bytes:
    pkt = tcp_packet(src, dst, sport, dport, seq=seq, ack=ack, flags=flags)
    return with_partial(pkt) if partial else vnet_hdr() + pkt


def feed(gate: SynGate, data: bytes, now: float = 0.0):
    pkt = parse_frame(data)
    assert isinstance(pkt, Packet)
    return gate.from_tun(pkt, now)


def test_syn_is_held_until_connected_then_released_unchanged() -> None:
    gate = SynGate()
    syn = frame(partial=True)
    out = feed(gate, syn)
    assert isinstance(out, Connect)
    assert (out.flow.target, out.flow.tport) == (D4, 80)
    assert gate.pending == 1 and gate.held_bytes == len(syn)
    assert gate.connected(out.flow, 1.0) == syn  # vnet header (partial checksum) kept
    assert gate.pending == 0
    # accept(): local D:80, peer A:40000
    flow = gate.take((A4, 40000, D4, 80))
    assert flow is out.flow and len(gate) == 0 and gate.held_bytes == 0


def test_retransmitted_syn_is_absorbed_while_pending_and_replayed_when_ready() -> None:
    gate = SynGate()
    out = feed(gate, frame(seq=1))
    again = frame(seq=1)
    assert feed(gate, again) == Drop(R.TCP_PENDING)
    gate.connected(out.flow, 0.5)
    assert feed(gate, again, 1.5) == again[:len(again)]


def test_refused_becomes_a_rst_acking_the_syn() -> None:
    gate = SynGate()
    out = feed(gate, frame(seq=5000))
    rst = gate.failed(out.flow, "refused")
    assert rst[:10] == vnet_hdr()
    pkt = parse_frame(rst)
    assert (pkt.src, pkt.dst, pkt.sport, pkt.dport) == (D4, A4, 80, 40000)
    assert pkt.tcp_flags == RST | ACK and pkt.ack == 5001
    assert ip_ok(rst[10:]) and l4_ok(rst[10:])
    assert len(gate) == 0 and gate.held_bytes == 0
    assert gate.failed(out.flow, "refused") is None  # once only


def test_unreachable_becomes_icmp_v6() -> None:
    gate = SynGate()
    out = feed(gate, frame(A6, D6))
    icmp = gate.failed(out.flow, "net")
    pkt = parse_frame(icmp)
    assert pkt.version == 6 and pkt.icmp_type == 1 and pkt.icmp_code == 0 and pkt.dst == A6


def test_policy_reject_and_redirect() -> None:
    def policy(pkt):
        if pkt.dport == 25:
            return Verdict(REJECT, reject="rst")
        if pkt.dport == 53:
            return Verdict(target=(bytes([127, 0, 0, 53]), 53))
        return Verdict()

    gate = SynGate(policy=policy)
    rst = feed(gate, frame(dport=25))
    assert isinstance(rst, bytes) and parse_frame(rst).tcp_flags & RST
    out = feed(gate, frame(dport=53))
    assert (out.flow.target, out.flow.tport) == (bytes([127, 0, 0, 53]), 53)
    assert gate.counters[R.POLICY_REJECT] == 1


def test_non_syn_is_answered_with_a_reset() -> None:
    gate = SynGate()
    out = feed(gate, frame(flags=ACK, seq=10, ack=77))
    pkt = parse_frame(out)
    assert pkt.tcp_flags == RST and pkt.seq == 77
    assert isinstance(feed(gate, frame(flags=RST)), Drop)  # never answer a RST


def test_bounds_on_pending_and_held_bytes() -> None:
    gate = SynGate(max_pending=2, max_flows=3)
    assert isinstance(feed(gate, frame(sport=1)), Connect)
    assert isinstance(feed(gate, frame(sport=2)), Connect)
    assert feed(gate, frame(sport=3)) == Drop(R.TCP_PENDING_LIMIT)
    small = SynGate(max_held_bytes=40)
    assert feed(small, frame(sport=1)) == Drop(R.HELD_BYTES_LIMIT)


def test_ready_flows_are_evicted_for_new_ones_when_full() -> None:
    gate = SynGate(max_flows=1)
    first = feed(gate, frame(sport=1)).flow
    gate.connected(first, 0)
    second = feed(gate, frame(sport=2))
    assert isinstance(second, Connect)
    assert gate.take((A4, 1, D4, 80)) is None


def test_expiry_fails_slow_connects_and_forgets_unaccepted() -> None:
    gate = SynGate(pending_timeout=20, accept_timeout=10)
    slow = feed(gate, frame(sport=1), now=0).flow
    ready = feed(gate, frame(sport=2), now=0).flow
    gate.connected(ready, 5)
    assert gate.expire(14) == []
    out = gate.expire(21)
    assert [f for f, _ in out] == [slow, ready]
    icmp = parse_frame(out[0][1])
    assert icmp.proto == ICMP and icmp.icmp_type == 3 and icmp.icmp_code == 1  # host unreachable
    assert out[1][1] is None and len(gate) == 0 and gate.held_bytes == 0


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([SYN, ACK, SYN | ACK, RST, SYN | RST]),
                          st.sampled_from(["feed", "ok", "fail", "take", "expire"])), max_size=60))
def test_random_sequences_keep_the_accounting_right(ops) -> None:
    gate = SynGate(max_pending=3, max_flows=4)
    flows = {}
    now = 0.0
    for sport, flags, op in ops:
        now += 1.5
        if op == "feed":
            out = feed(gate, frame(sport=sport + 1, flags=flags), now)
            if isinstance(out, Connect):
                flows[sport] = out.flow
        elif op == "ok" and sport in flows:
            gate.connected(flows[sport], now)
        elif op == "fail" and sport in flows:
            gate.failed(flows.pop(sport), "host")
        elif op == "take":
            gate.take((A4, sport + 1, D4, 80))
        elif op == "expire":
            gate.expire(now)
        assert gate.pending <= 3 and len(gate) <= 4
        held = sum(len(f.syn) for lru in gate._lru for f in lru.values())
        assert gate.held_bytes == held
