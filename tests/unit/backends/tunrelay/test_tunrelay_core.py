"""The engine: TUN frames in, actions out."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from netwrap.backends.tunrelay.core import (
    Closed,
    CoreConfig,
    EchoSend,
    RelayCore,
    TcpConnect,
    UdpSend,
    WriteTun,
    policy_from_decide,
)
from netwrap.backends.tunrelay.nat import DROP, REJECT, NatConfig, Verdict
from netwrap.backends.tunrelay.packets import parse_frame, parse_ip
from netwrap.backends.tunrelay.vnet import GSO_UDP_L4

from _tr_ref import (
    A4, A6, ACK, D4, D6, F4, F6, L4, L6, SYN, complete_partial, echo_request, icmp_message,
    ip_ok, ipv4, ipv6, l4_ok, tcp_packet, udp_packet, vnet_hdr,
)

NAT = NatConfig(listener4=(L4, 1), listener6=(L6, 1), pool4=[F4], pool6=[F6])


def core(**kw) -> RelayCore:
    policy = kw.pop("policy", None)
    return RelayCore(CoreConfig(nat=NAT, **kw), policy=policy)


def fam(v):
    return (A4, D4) if v == 4 else (A6, D6)


@pytest.mark.parametrize("v", [4, 6])
def test_tcp_through_the_engine(v):
    a, d = fam(v)
    c = core()
    ev = c.from_tun(vnet_hdr() + tcp_packet(a, d, 40000, 443, flags=SYN), 0.0)
    assert isinstance(ev, TcpConnect) and ev.flow.target == d
    out = c.tcp_connected(ev.flow, 0.1)
    assert isinstance(out, WriteTun)
    syn = parse_frame(out.data)
    assert c.original_destination(syn.src, syn.sport) == (d, 443)
    assert c.tcp_flow_for_peer(syn.src, syn.sport) is ev.flow
    # and a refused one
    ev2 = c.from_tun(vnet_hdr() + tcp_packet(a, d, 40001, 443, flags=SYN), 0.0)
    rst = parse_frame(c.tcp_failed(ev2.flow, "refused").data)
    assert rst.dst == a and rst.dport == 40001
    # stray segment: answered with a RST frame
    stray = c.from_tun(vnet_hdr() + tcp_packet(a, d, 40002, 443, flags=ACK), 0.0)
    assert isinstance(stray, WriteTun) and parse_frame(stray.data).tcp_flags & 4


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("offload", [True, False])
def test_udp_round_trip(v, offload):
    a, d = fam(v)
    c = core(offload_udp_csum=offload)
    ev = c.from_tun(vnet_hdr() + udp_packet(a, d, 5353, 53, b"query"), 0.0)
    assert isinstance(ev, UdpSend) and ev.new
    assert [bytes(x) for x in ev.datagrams] == [b"query"]
    assert (ev.flow.target, ev.flow.tport) == (d, 53)
    ev2 = c.from_tun(vnet_hdr() + udp_packet(a, d, 5353, 53, b"again"), 1.0)
    assert ev2.flow is ev.flow and not ev2.new
    out = c.udp_from_host(ev.flow, b"answer" * 50, 2.0).data
    ip = complete_partial(out)
    assert ip == udp_packet(d, a, 53, 5353, b"answer" * 50, **({"ident": 0} if v == 4 else {}))
    assert ip_ok(ip) and l4_ok(ip)
    assert (out[0] == 1) == offload  # NEEDS_CSUM only when offloading


def test_udp_gso_is_split():
    c = core()
    payload = bytes(range(256)) * 15 + b"tail"
    frame = vnet_hdr(1, GSO_UDP_L4, 28, 1000, 20, 6) + udp_packet(A4, D4, 1000, 443, payload)
    ev = c.from_tun(frame, 0.0)
    assert [len(x) for x in ev.datagrams] == [1000, 1000, 1000, 844]
    assert b"".join(ev.datagrams) == payload


def test_udp_errors_and_limits():
    c = core(mtu=1500)
    ev = c.from_tun(vnet_hdr() + udp_packet(A4, D4, 5000, 9, b"x"), 0.0)
    err = parse_frame(c.udp_error(ev.flow, "port").data)
    assert (err.src, err.dst, err.icmp_type, err.icmp_code) == (D4, A4, 3, 3)
    inner = parse_ip(bytes(err.payload_view()))
    assert (inner.src, inner.sport, inner.dst, inner.dport) == (A4, 5000, D4, 9)
    assert c.udp_from_host(ev.flow, b"x" * 1473, 1.0) is None
    assert c.counters["too_big"] == 1
    assert c.udp_from_host(ev.flow, b"x" * 1472, 1.0) is not None


def test_udp_flow_limit_evicts_and_reports():
    c = core(udp_max_flows=2)
    flows = [c.from_tun(vnet_hdr() + udp_packet(A4, D4, 1000 + i, 53), float(i)).flow for i in range(3)]
    closed = c.expire(3.0)
    assert closed == [Closed(flows[0])]
    assert c.udp_from_host(flows[0], b"late", 3.0) is None  # its socket is to be closed


@pytest.mark.parametrize("v", [4, 6])
def test_echo(v):
    a, d = fam(v)
    c = core()
    ev = c.from_tun(vnet_hdr() + echo_request(a, d, 0x4242, 1, b"abcdefgh"), 0.0)
    assert isinstance(ev, EchoSend) and ev.new and ev.seq == 1 and bytes(ev.payload) == b"abcdefgh"
    ev2 = c.from_tun(vnet_hdr() + echo_request(a, d, 0x4242, 2, b"abcdefgh"), 1.0)
    assert ev2.flow is ev.flow and not ev2.new
    reply = c.echo_from_host(ev.flow, 2, b"abcdefgh", 1.5).data
    p = parse_frame(reply)
    assert (p.src, p.dst, p.sport, p.seq) == (d, a, 0x4242, 2)
    assert p.icmp_type == (0 if v == 4 else 129)
    assert l4_ok(reply[10:]) and ip_ok(reply[10:])
    err = parse_frame(c.echo_error(ev.flow, 3, "host").data)
    assert err.icmp_type == (3 if v == 4 else 1)
    inner = parse_ip(bytes(err.payload_view()))
    assert inner.is_echo_request and (inner.sport, inner.seq) == (0x4242, 3)


def test_policy_on_udp_and_echo():
    def policy(pkt):
        if pkt.dst == D4:
            return Verdict(REJECT, reject="rst")
        if pkt.dst == D6:
            return Verdict(DROP)
        return Verdict()
    c = core(policy=policy)
    ev = c.from_tun(vnet_hdr() + udp_packet(A4, D4, 1, 2), 0.0)
    p = parse_frame(ev.data)
    assert (p.icmp_type, p.icmp_code) == (3, 3)  # "rst" for UDP: port unreachable
    assert c.from_tun(vnet_hdr() + echo_request(A6, D6, 1, 1), 0.0) is None
    assert c.counters["policy_drop"] == 1 and c.counters["policy_reject"] == 1
    assert len(c.udp) == 0 and len(c.echo) == 0


def test_ignored_and_bad_traffic_is_counted():
    c = core()
    assert c.from_tun(b"garbage", 0.0) is None
    assert c.from_tun(vnet_hdr() + udp_packet(A4, bytes([255] * 4), 68, 67), 0.0) is None
    rs = icmp_message(A6, bytes.fromhex("ff02" + "00" * 13 + "02"), 133, 0, bytes(4))
    assert c.from_tun(vnet_hdr() + ipv6(A6, bytes.fromhex("ff02" + "00" * 13 + "02"), 58, rs), 0.0) is None
    err = ipv4(A4, D4, 1, icmp_message(A4, D4, 3, 3, bytes(4), bytes(28)))
    assert c.from_tun(vnet_hdr() + err, 0.0) is None
    reply = ipv4(A4, D4, 1, icmp_message(A4, D4, 0, 0, bytes(4)))
    assert c.from_tun(vnet_hdr() + reply, 0.0) is None
    s = c.stats()
    assert s["truncated"] == 1 and s["bad_address"] == 2
    assert s["icmp_error_from_child"] == 1 and s["icmp_ignored"] == 1
    assert s["tcp_flows"] == 0 and s["udp_flows"] == 0


def test_plain_frames_without_vnet():
    c = RelayCore(CoreConfig(vnet=False, nat=NAT))
    ev = c.from_tun(udp_packet(A4, D4, 1000, 53, b"q"), 0.0)
    out = c.udp_from_host(ev.flow, b"a", 0.0).data
    assert out == udp_packet(D4, A4, 53, 1000, b"a", ident=0)
    t = c.from_tun(tcp_packet(A4, D4, 1000, 80), 0.0)
    assert parse_ip(c.tcp_connected(t.flow, 0.0).data).dst == L4


def test_expire_and_forget():
    c = core(udp_timeout=10.0, echo_timeout=5.0)
    u = c.from_tun(vnet_hdr() + udp_packet(A4, D4, 1, 2), 0.0).flow
    e = c.from_tun(vnet_hdr() + echo_request(A4, D4, 1, 1), 0.0).flow
    t = c.from_tun(vnet_hdr() + tcp_packet(A4, D4, 1000, 80), 0.0).flow
    assert {x.flow for x in c.expire(6.0)} == {e}
    c.forget(u)
    c.forget(t)
    assert c.expire(1e6) == [] and len(c.udp) == 0 and len(c.nat) == 0


def test_policy_from_decide():
    seen = []

    def decide(proto, addr, port):
        seen.append((proto, str(addr), port))
        return SimpleNamespace(allowed=str(addr) != "93.184.216.34")

    resolver = (bytes([127, 0, 0, 53]), 53)
    c = core(policy=policy_from_decide(decide, dns4=resolver))
    dns = c.from_tun(vnet_hdr() + udp_packet(A4, D4, 999, 53, b"q"), 0.0)
    assert (dns.flow.target, dns.flow.tport) == resolver and dns.flow.dst == D4
    denied = c.from_tun(vnet_hdr() + tcp_packet(A4, D4, 1000, 80), 0.0)
    assert parse_frame(denied.data).icmp_code == 13  # admin prohibited
    c.from_tun(vnet_hdr() + echo_request(A6, D6, 1, 1), 0.0)
    assert seen == [("udp", "127.0.0.53", 53), ("tcp", "93.184.216.34", 80),
                    ("icmp", "2606:4700::1111", None)]
