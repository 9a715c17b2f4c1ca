"""The TCP NAT (TUN NAT path) and the UDP/echo flow tables."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

from netwrap.backends.tunrelay.counters import Drop
from netwrap.backends.tunrelay.nat import (
    DROP,
    REJECT,
    Flow,
    FlowTable,
    NatConfig,
    NewFlow,
    TcpNat,
    Verdict,
)
from netwrap.backends.tunrelay.packets import endpoint_deltas, parse_frame, parse_ip, rewrite_endpoints
from netwrap.backends.tunrelay.vnet import GSO_TCPV4

from _tr_ref import (
    A4, A6, ACK, D4, D6, F4, F6, FIN, L4, L6, PSH, RST, SYN, TCP, UDP,
    complete_partial, ip_ok, l4_ok, tcp_packet, udp_packet, vnet_hdr, with_partial,
)

LPORT = 1  # listener port: outside the ephemeral range, so apps never use it


def make_nat(**kw) -> TcpNat:
    cfg = dict(listener4=(L4, LPORT), listener6=(L6, LPORT), pool4=[F4], pool6=[F6])
    cfg.update(kw)
    return TcpNat(NatConfig(**cfg))


def fam(v):
    return (A4, D4, L4, F4) if v == 4 else (A6, D6, L6, F6)


def out_bytes(r) -> bytes:
    assert not isinstance(r, (Drop, NewFlow)), r
    return bytes(r)


def open_flow(nat, v=4, sport=40000, dport=443, now=0.0, vnet=False):
    a, d, _, _ = fam(v)
    raw = tcp_packet(a, d, sport, dport, seq=1000, flags=SYN)
    r = nat.rewrite(parse_frame(vnet_hdr() + raw) if vnet else parse_ip(raw), now)
    assert isinstance(r, NewFlow), r
    return r.flow


# -- the path of one connection ------------------------------------------------

@pytest.mark.parametrize("v", [4, 6])
def test_connection_round_trip(v):
    a, d, lst, fake = fam(v)
    nat = make_nat()
    flow = open_flow(nat, v)
    assert (flow.src, flow.sport, flow.dst, flow.dport) == (a, 40000, d, 443)
    assert (flow.target, flow.tport) == (d, 443) and flow.fake == fake
    assert nat.original_destination(fake, flow.fport) == (d, 443)
    assert nat.original_destination(str(ipaddress.ip_address(fake)), flow.fport) == (d, 443)
    assert nat.original_destination("not an address", 5) is None
    assert nat.flow_for_peer(fake, flow.fport) is flow

    syn = parse_ip(out_bytes(nat.connected(flow, 1.0)))
    assert (syn.src, syn.sport, syn.dst, syn.dport) == (fake, flow.fport, lst, LPORT)
    assert syn.tcp_flags == SYN and syn.seq == 1000
    raw = syn.ip_view().tobytes()
    assert ip_ok(raw) and l4_ok(raw)

    # the listener answers the fake peer; the app must see the far end
    synack = tcp_packet(lst, fake, LPORT, flow.fport, seq=5000, ack=1001, flags=SYN | ACK)
    back = out_bytes(nat.rewrite(parse_ip(synack), 1.1))
    p = parse_ip(back)
    assert (p.src, p.sport, p.dst, p.dport) == (d, 443, a, 40000)
    assert p.tcp_flags == SYN | ACK and (p.seq, p.ack) == (5000, 1001)
    assert ip_ok(back) and l4_ok(back)
    assert back == tcp_packet(d, a, 443, 40000, seq=5000, ack=1001, flags=SYN | ACK)

    data = tcp_packet(a, d, 40000, 443, seq=1001, ack=5001, flags=PSH | ACK, payload=b"hello" * 100)
    fwd = out_bytes(nat.rewrite(parse_ip(data), 1.2))
    assert fwd == tcp_packet(fake, lst, flow.fport, LPORT, seq=1001, ack=5001, flags=PSH | ACK,
                             payload=b"hello" * 100)


def test_rewrite_in_place_for_writable_frames():
    nat = make_nat(hold_syn=False)
    buf = bytearray(vnet_hdr() + tcp_packet(A4, D4, 40000, 443, flags=SYN) + b"junk")
    out = nat.rewrite(parse_frame(memoryview(buf)), 0.0)
    assert isinstance(out, memoryview) and out.obj is buf
    assert len(out) == len(buf) - 4  # cut at the IP end, vnet header kept
    p = parse_frame(out)
    assert p.src == F4 and p.dst == L4
    assert l4_ok(bytes(out[10:]))


@pytest.mark.parametrize("v", [4, 6])
def test_partial_checksum_rewrite_completes_correctly(v):
    """With NEEDS_CSUM only the pseudo-header part is patched; after the
    kernel completes the sum, the packet equals a fully rewritten one."""
    a, d, lst, fake = fam(v)
    nat = make_nat(hold_syn=False)
    flow = nat.rewrite(parse_frame(vnet_hdr() + tcp_packet(a, d, 40000, 443, flags=SYN)), 0.0)
    flow = nat.flow_for_peer(fake, parse_frame(flow).sport)
    plain = tcp_packet(a, d, 40000, 443, seq=1, ack=2, flags=ACK, payload=b"x" * 3001)
    partial = with_partial(plain)
    out = out_bytes(nat.rewrite(parse_frame(partial), 1.0))
    assert out[:10] == partial[:10]  # the vnet header passes unchanged
    want = tcp_packet(fake, lst, flow.fport, LPORT, seq=1, ack=2, flags=ACK, payload=b"x" * 3001)
    assert complete_partial(out) == want


def test_gso_segment_passes_with_its_header():
    nat = make_nat(hold_syn=False)
    nat.rewrite(parse_ip(tcp_packet(A4, D4, 40000, 443, flags=SYN)), 0.0)
    big = tcp_packet(A4, D4, 40000, 443, seq=9, ack=9, flags=ACK, payload=bytes(60000))
    hdr = vnet_hdr(1, GSO_TCPV4, 40, 1448, 20, 16)
    frame = with_partial(big)
    frame = hdr + frame[10:]
    out = out_bytes(nat.rewrite(parse_frame(frame), 1.0))
    assert out[:10] == hdr and len(out) == len(frame)
    assert l4_ok(complete_partial(out))


@settings(max_examples=200)
@given(st.sampled_from([4, 6]), st.sampled_from([TCP, UDP]), st.binary(max_size=300),
       st.integers(1, 65535), st.integers(1, 65535), st.integers(1, 65535), st.integers(1, 65535),
       st.binary(min_size=32, max_size=32), st.booleans())
def test_rfc1624_rewrite_equals_full_recompute(v, proto, payload, sp, dp, nsp, ndp, addrs, partial):
    n = 4 if v == 4 else 16
    src, dst = fam(v)[:2]
    nsrc, ndst = addrs[:n], addrs[16:16 + n]
    build = tcp_packet if proto == TCP else udp_packet
    before = build(src, dst, sp, dp, payload=payload) if proto == UDP else \
        build(src, dst, sp, dp, seq=7, ack=8, flags=ACK, payload=payload)
    after = build(nsrc, ndst, nsp, ndp, payload=payload) if proto == UDP else \
        build(nsrc, ndst, nsp, ndp, seq=7, ack=8, flags=ACK, payload=payload)
    if partial:
        out = bytes(rewrite_endpoints(parse_frame(with_partial(before)), nsrc, nsp, ndst, ndp))
        assert complete_partial(out) == after
    else:
        out = bytes(rewrite_endpoints(parse_ip(before), nsrc, nsp, ndst, ndp))
        assert out == after
        assert ip_ok(out) and l4_ok(out)


def test_udp_without_checksum_keeps_none():
    raw = bytearray(udp_packet(A4, D4, 1, 2, b"abc"))
    raw[26:28] = b"\0\0"
    out = bytes(rewrite_endpoints(parse_ip(bytes(raw)), F4, 3, L4, 4))
    assert out[26:28] == b"\0\0" and ip_ok(out)


# -- packets that match no flow -------------------------------------------------

def test_no_flow_gets_a_rst():
    nat = make_nat()
    ack = tcp_packet(A4, D4, 40000, 443, seq=10, ack=77, flags=ACK)
    p = parse_ip(out_bytes(nat.rewrite(parse_ip(ack), 0.0)))
    assert (p.src, p.dst, p.tcp_flags, p.seq) == (D4, A4, RST, 77)
    stray = tcp_packet(L4, F4, LPORT, 2000, seq=10, ack=99, flags=ACK)
    p = parse_ip(out_bytes(nat.rewrite(parse_ip(stray), 0.0)))
    assert (p.src, p.sport, p.dst, p.dport, p.tcp_flags) == (F4, 2000, L4, LPORT, RST)
    assert isinstance(nat.rewrite(parse_ip(tcp_packet(A4, D4, 1, 2, flags=RST)), 0), Drop)
    assert nat.counters["tcp_no_flow"] == 3
    # a vnet frame is answered with a vnet frame
    out = out_bytes(nat.rewrite(parse_frame(vnet_hdr() + ack), 0.0))
    assert out[:10] == bytes(10) and parse_frame(out).tcp_flags == RST


def test_inbound_from_wrong_source_is_not_trusted():
    nat = make_nat()
    flow = open_flow(nat)
    nat.connected(flow, 0.0)
    other = tcp_packet(L4, F4, 2, flow.fport, flags=ACK)  # not the listener port
    r = nat.rewrite(parse_ip(other), 0.0)
    assert parse_ip(out_bytes(r)).tcp_flags == RST


# -- holding the SYN -----------------------------------------------------------

def test_pending_flow_drops_retransmits_and_reports_rst():
    nat = make_nat()
    flow = open_flow(nat)
    again = nat.rewrite(parse_ip(tcp_packet(A4, D4, 40000, 443, flags=SYN)), 0.5)
    assert again == Drop("tcp_pending")
    assert nat.pending == 1 and nat.held_bytes > 0
    nat.rewrite(parse_ip(tcp_packet(A4, D4, 40000, 443, flags=RST)), 0.6)
    assert len(nat) == 0 and nat.held_bytes == 0
    assert nat.expire(1.0) == [flow]
    assert nat.connected(flow, 2.0) is None  # late answer from the I/O layer


@pytest.mark.parametrize("v", [4, 6])
def test_connect_refused_becomes_rst(v):
    a, d, _, _ = fam(v)
    nat = make_nat()
    flow = open_flow(nat, v)
    p = parse_ip(out_bytes(nat.failed(flow, "refused")))
    assert (p.src, p.sport, p.dst, p.dport) == (d, 443, a, 40000)
    assert p.tcp_flags == RST | ACK and p.ack == 1001
    assert len(nat) == 0 and nat.held_bytes == 0 and nat.expire(10.0) == []
    assert nat.failed(flow, "refused") is None


@pytest.mark.parametrize("v,typ,code", [(4, 3, 1), (6, 1, 3)])
def test_connect_unreachable_becomes_icmp(v, typ, code):
    a, d, _, _ = fam(v)
    nat = make_nat()
    flow = open_flow(nat, v, vnet=True)
    out = out_bytes(nat.failed(flow, "timeout"))
    p = parse_frame(out)
    assert (p.src, p.dst, p.icmp_type, p.icmp_code) == (d, a, typ, code)
    assert bytes(p.payload_view()) == tcp_packet(a, d, 40000, 443, seq=1000, flags=SYN)
    assert l4_ok(out[10:])


def test_without_hold_the_syn_goes_straight_through():
    nat = make_nat(hold_syn=False)
    r = nat.rewrite(parse_ip(tcp_packet(A4, D4, 40000, 443, flags=SYN)), 0.0)
    p = parse_ip(out_bytes(r))
    assert p.dst == L4 and p.dport == LPORT and nat.pending == 0
    assert nat.original_destination(p.src, p.sport) == (D4, 443)


# -- policy ------------------------------------------------------------------------

def test_policy_drop_reject_redirect():
    def policy(pkt):
        if pkt.dport == 23:
            return Verdict(DROP)
        if pkt.dport == 25:
            return Verdict(REJECT, reject="rst")
        if pkt.dport == 26:
            return Verdict(REJECT, reject="admin")
        if pkt.dport == 53:
            return Verdict(target=(bytes([9, 9, 9, 9]), 53))
        return Verdict()
    nat = TcpNat(NatConfig(listener4=(L4, LPORT), pool4=[F4]), policy=policy)
    assert nat.rewrite(parse_ip(tcp_packet(A4, D4, 1000, 23)), 0) == Drop("policy_drop")
    assert parse_ip(out_bytes(nat.rewrite(parse_ip(tcp_packet(A4, D4, 1000, 25)), 0))).tcp_flags == RST | ACK
    icmp = parse_ip(out_bytes(nat.rewrite(parse_ip(tcp_packet(A4, D4, 1000, 26)), 0)))
    assert (icmp.icmp_type, icmp.icmp_code) == (3, 13)
    flow = nat.rewrite(parse_ip(tcp_packet(A4, D4, 1000, 53)), 0).flow
    assert (flow.target, flow.tport) == (bytes([9, 9, 9, 9]), 53)
    assert nat.original_destination(flow.fake, flow.fport) == (D4, 53)
    assert nat.counters["policy_reject"] == 2 and len(nat) == 1
    # no IPv6 listener configured
    assert nat.rewrite(parse_ip(tcp_packet(A6, D6, 1, 2)), 0) == Drop("no_listener")


def test_bad_destinations_refused():
    nat = make_nat()
    assert nat.rewrite(parse_ip(tcp_packet(A4, bytes([224, 0, 0, 5]), 1234, 2)), 0) == Drop("bad_address")
    assert nat.rewrite(parse_ip(tcp_packet(A4, L4, 1234, 2)), 0) == Drop("bad_address")


# -- lifecycle and bounds ----------------------------------------------------------

def test_fin_both_ways_then_expiry_and_port_reuse():
    nat = make_nat(closing_timeout=60.0, established_timeout=1000.0, pending_timeout=30.0)
    flow = open_flow(nat)
    nat.connected(flow, 0.0)
    nat.rewrite(parse_ip(tcp_packet(A4, D4, 40000, 443, flags=FIN | ACK)), 1.0)
    nat.rewrite(parse_ip(tcp_packet(L4, F4, LPORT, flow.fport, flags=ACK)), 1.5)
    assert nat.expire(200.0) == []  # half closed: still the long timeout
    nat.rewrite(parse_ip(tcp_packet(L4, F4, LPORT, flow.fport, flags=FIN | ACK)), 201.0)
    assert nat.expire(260.0) == []
    assert nat.expire(261.0) == [flow]  # closing timeout after the last FIN

    again = open_flow(nat, now=300.0)
    nat.connected(again, 300.0)
    nat.rewrite(parse_ip(tcp_packet(A4, D4, 40000, 443, flags=RST)), 301.0)
    # the app reuses its port at once: a fresh flow, with a fresh fake port
    newer = nat.rewrite(parse_ip(tcp_packet(A4, D4, 40000, 443, flags=SYN)), 302.0)
    assert isinstance(newer, NewFlow) and newer.flow.fport != again.fport
    assert nat.expire(302.0) == [again]  # replaced: reported so its sockets close
    assert nat.expire(331.0) == []
    assert nat.expire(332.0) == [newer.flow]  # pending too long


def test_expiry_per_state():
    nat = make_nat(pending_timeout=10.0, established_timeout=100.0, closing_timeout=5.0)
    pending = open_flow(nat, sport=1001)
    est = open_flow(nat, sport=1002)
    nat.connected(est, 0.0)
    closing = open_flow(nat, sport=1003)
    nat.connected(closing, 0.0)
    nat.rewrite(parse_ip(tcp_packet(A4, D4, 1003, 443, flags=RST)), 1.0)
    assert nat.expire(5.9) == []
    assert nat.expire(6.0) == [closing]
    assert nat.expire(10.0) == [pending]
    nat.rewrite(parse_ip(tcp_packet(A4, D4, 1002, 443, flags=ACK)), 50.0)  # activity
    assert nat.expire(120.0) == []
    assert nat.expire(150.0) == [est]
    assert len(nat) == 0


def test_eviction_prefers_closing_then_oldest_open():
    nat = make_nat(max_flows=3, max_pending=3)
    flows = []
    for i, sport in enumerate((2001, 2002, 2003)):
        f = open_flow(nat, sport=sport, now=float(i))
        nat.connected(f, float(i))
        flows.append(f)
    nat.rewrite(parse_ip(tcp_packet(A4, D4, 2001, 443, flags=ACK)), 10.0)  # 2001 active again
    nat.rewrite(parse_ip(tcp_packet(A4, D4, 2003, 443, flags=RST)), 11.0)  # 2003 closing
    open_flow(nat, sport=2004, now=12.0)
    assert nat.expire(12.0) == [flows[2]]  # closing went first
    open_flow(nat, sport=2005, now=13.0)
    assert nat.expire(13.0) == [flows[1]]  # then the least recently active open one
    assert len(nat) == 3


def test_pending_and_held_bytes_limits():
    nat = make_nat(max_pending=2, max_flows=10)
    open_flow(nat, sport=11)
    open_flow(nat, sport=12)
    assert nat.rewrite(parse_ip(tcp_packet(A4, D4, 13, 443)), 0) == Drop("tcp_pending_limit")
    small = make_nat(max_held_bytes=100)
    open_flow(small, sport=11)  # 40 bytes
    open_flow(small, sport=12)
    big = tcp_packet(A4, D4, 13, 443, payload=b"x" * 100)  # a SYN with data (TFO)
    assert small.rewrite(parse_ip(big), 0) == Drop("held_bytes_limit")
    assert small.held_bytes == 80


def test_only_pending_flows_means_flow_limit():
    nat = make_nat(max_flows=2, max_pending=2)
    open_flow(nat, sport=11)
    open_flow(nat, sport=12)
    # both pending: nothing evictable, and pending is full anyway
    assert isinstance(nat.rewrite(parse_ip(tcp_packet(A4, D4, 13, 443)), 0), Drop)


def test_fake_ports_rotate_over_the_pool():
    nat = make_nat(pool4=[F4, bytes([10, 0, 3, 2])], pool6=(), ports=(5000, 5002), max_flows=5, max_pending=5,
                   hold_syn=False)
    seen = []
    for sport in range(11, 16):
        p = parse_ip(out_bytes(nat.rewrite(parse_ip(tcp_packet(A4, D4, sport, 80)), 0)))
        seen.append((p.src, p.sport))
    assert len(set(seen)) == 5
    assert seen[:3] == [(F4, 5000), (F4, 5001), (F4, 5002)] and seen[3] == (bytes([10, 0, 3, 2]), 5000)


def test_config_validation():
    with pytest.raises(ValueError):
        NatConfig(listener4=("10.0.2.100", 0))
    with pytest.raises(ValueError):
        NatConfig(pool4=["10.0.3.1"], ports=(1000, 1001), max_flows=8)
    with pytest.raises(ValueError):
        NatConfig(listener4=("10.0.3.1", 1), pool4="10.0.3.0/24")
    with pytest.raises(ValueError):
        NatConfig(pool4=["fd00::1"])
    with pytest.raises(ValueError):
        NatConfig(ports=(0, 10))
    cfg = NatConfig(listener4=("10.0.2.100", 1), pool4="10.0.3.0/24", pool6="fd00::3:0/112")
    assert cfg.listener4 == (A4, 1) and len(cfg.pool4) == 254 and cfg.pool4[0] == F4
    assert len(cfg.pool6) == 4096  # capped


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(2, 41), st.sampled_from(["syn", "ok", "fail", "ack", "fin",
                                                                 "rst", "tick", "in"])),
                max_size=80))
def test_bounds_and_consistency_under_random_flows(ops):
    nat = make_nat(max_flows=8, max_pending=4, max_held_bytes=150, pending_timeout=3.0,
                   established_timeout=20.0, closing_timeout=2.0)
    now = 0.0
    live = {}
    for sport, op in ops:
        now += 0.25
        if op == "syn":
            r = nat.rewrite(parse_ip(tcp_packet(A4, D4, sport, 443, flags=SYN)), now)
            if isinstance(r, NewFlow):
                live[sport] = r.flow
        elif op in ("ok", "fail") and sport in live:
            (nat.connected(live[sport], now) if op == "ok" else nat.failed(live[sport], "refused"))
        elif op in ("ack", "fin", "rst"):
            flags = {"ack": ACK, "fin": FIN | ACK, "rst": RST}[op]
            nat.rewrite(parse_ip(tcp_packet(A4, D4, sport, 443, flags=flags)), now)
        elif op == "in" and sport in live:
            f = live[sport]
            nat.rewrite(parse_ip(tcp_packet(L4, F4, LPORT, f.fport, flags=ACK)), now)
        elif op == "tick":
            now += sport
            nat.expire(now)
        # invariants
        assert len(nat) <= 8 and nat.pending <= 4 and 0 <= nat.held_bytes <= 150
        flows = nat.flows()
        assert nat.held_bytes == sum(len(f.held) for f in flows if f.held is not None)
        assert len({(f.fake, f.fport) for f in flows}) == len(flows)
        for f in flows:
            assert nat.flow_for_peer(f.fake, f.fport) is f
    nat.expire(now + 1e5)
    assert len(nat) == 0 and nat.held_bytes == 0


# -- flow tables -------------------------------------------------------------------

def test_flow_table_basics():
    t = FlowTable(UDP, max_flows=2, idle_timeout=10.0)
    k1 = (A4, 1000, D4, 53)
    f1 = t.create(k1, 0.0)
    assert isinstance(f1, Flow) and (f1.target, f1.tport) == (D4, 53)
    assert t.get(k1) is f1 and t.by_id(f1.id) is f1
    f2 = t.create((A4, 1001, D4, 53), 1.0, target=(bytes([9, 9, 9, 9]), 53))
    assert f2.target == bytes([9, 9, 9, 9])
    t.touch(f1, 5.0)
    f3 = t.create((A4, 1002, D4, 53), 6.0)  # full: evicts f2, the least recent
    assert t.get((A4, 1001, D4, 53)) is None and len(t) == 2
    assert t.expire(6.0) == [f2]
    assert t.expire(15.5) == [f1]
    t.remove(f3)
    assert len(t) == 0 and t.by_id(f3.id) is None and t.expire(100.0) == []
    t.remove(f3)  # twice is harmless
    with pytest.raises(ValueError):
        FlowTable(UDP, max_flows=0)


def test_flow_table_replaces_same_key():
    t = FlowTable(UDP, max_flows=4)
    k = (A4, 1, D4, 2)
    a = t.create(k, 0.0)
    b = t.create(k, 1.0)
    assert t.get(k) is b and len(t) == 1 and t.expire(1.0) == [a]


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5)), max_size=100))
def test_flow_table_bounds(ops):
    t = FlowTable(UDP, max_flows=5, idle_timeout=3.0)
    now = 0.0
    for port, dt in ops:
        now += dt
        key = (A4, port + 1, D4, 53)
        f = t.get(key)
        if f is None:
            t.create(key, now)
        else:
            t.touch(f, now)
        if dt == 5:
            for gone in t.expire(now):
                assert t.by_id(gone.id) is None
        assert len(t) <= 5


@settings(max_examples=100)
@given(st.sampled_from([4, 6]), st.integers(1, 65535), st.integers(1, 65535), st.binary(max_size=50),
       st.booleans())
def test_precomputed_deltas_match(v, sp, dp, payload, partial):
    """The per-flow deltas the NAT caches give the same bytes as computing
    them from the packet."""
    a, d, lst, fake = fam(v)
    raw = tcp_packet(a, d, sp, dp, seq=1, ack=2, flags=ACK, payload=payload)
    pkt = parse_frame(with_partial(raw)) if partial else parse_ip(raw)
    deltas = endpoint_deltas(a, sp, d, dp, fake, 7, lst, LPORT)
    assert bytes(rewrite_endpoints(pkt, fake, 7, lst, LPORT, deltas)) == \
        bytes(rewrite_endpoints(pkt, fake, 7, lst, LPORT))
