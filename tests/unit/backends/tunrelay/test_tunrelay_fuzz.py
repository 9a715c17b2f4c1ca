"""Hostile input: any bytes in, no exception out.

The parsers are called through ``_parse`` (no safety net), so a parser bug
shows up here as an exception instead of hiding as a "malformed" drop.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings, strategies as st

from netwrap.backends.tunrelay import packets
from netwrap.backends.tunrelay.core import CoreConfig, RelayCore
from netwrap.backends.tunrelay.counters import Drop, R
from netwrap.backends.tunrelay.nat import NatConfig, TcpNat
from netwrap.backends.tunrelay.packets import (
    TCP,
    UDP,
    Packet,
    build_icmp_unreachable,
    build_tcp_rst,
    rewrite_endpoints,
)

from _tr_ref import (
    A4, A6, ACK, D4, D6, F4, F6, L4, L6, PSH, SYN, echo_request, icmp_message, ipv4, ipv6,
    tcp_packet, udp_datagram, udp_packet, vnet_hdr, with_partial,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse(frame, vnet):
    return packets._parse(frame, 10 if vnet else 0)


def check_invariants(p, frame):
    if isinstance(p, Drop):
        assert p.reason in vars(R).values()
        return
    assert isinstance(p, Packet)
    assert 0 <= p.off < p.l4 <= p.payload <= p.end <= len(frame)
    assert p.version in (4, 6) and len(p.src) == len(p.dst) == (4 if p.version == 4 else 16)
    assert p.proto in (packets.TCP, packets.UDP, packets.ICMP, packets.ICMPV6)
    assert 0 <= p.sport < 65536 and 0 <= p.dport < 65536


@FUZZ
@given(st.binary(max_size=200), st.booleans())
def test_any_bytes_parse(frame, vnet):
    check_invariants(parse(frame, vnet), frame)


@FUZZ
@given(st.binary(max_size=120), st.booleans())
def test_any_bytes_behind_a_plausible_header(tail, v6):
    """Random bytes after a believable first byte reach the deeper code."""
    frame = (b"\x60" if v6 else b"\x45") + tail
    check_invariants(parse(frame, False), frame)
    check_invariants(parse(bytes(10) + frame, True), bytes(10) + frame)


def valid_packets():
    """A strategy of well-formed packets of every kind the parser knows."""
    fam = st.sampled_from([(A4, D4), (A6, D6)])
    payload = st.binary(max_size=64)
    port = st.integers(1, 65535)
    tcp = st.builds(lambda f, sp, dp, fl, pl: tcp_packet(f[0], f[1], sp, dp, 5, 6, fl, pl),
                    fam, port, port, st.integers(0, 0x1FF), payload)
    udp = st.builds(lambda f, sp, dp, pl: udp_packet(f[0], f[1], sp, dp, pl), fam, port, port, payload)
    echo = st.builds(lambda f, i, s, pl: echo_request(f[0], f[1], i, s, pl),
                     fam, st.integers(0, 65535), st.integers(0, 65535), payload)
    err4 = st.builds(lambda q: ipv4(A4, D4, 1, icmp_message(A4, D4, 3, 3, bytes(4), q)), payload)
    ext6 = st.builds(lambda pl: ipv6(A6, D6, 17, udp_datagram(A6, D6, 1, 2, pl),
                                     ext=bytes([60, 0, 1, 4, 0, 0, 0, 0, 17, 0, 1, 4, 0, 0, 0, 0]),
                                     first_nh=0), payload)
    return st.one_of(tcp, udp, echo, err4, ext6)


@st.composite
def mutated(draw):
    raw = bytearray(draw(valid_packets()))
    if draw(st.booleans()):
        raw = bytearray(with_partial(bytes(raw))) if raw[9 if raw[0] >> 4 == 4 else 6] in (6, 17) \
            else bytearray(vnet_hdr() + raw)
        vnet = True
    else:
        vnet = False
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "grow"]))
        if op in ("flip", "set") and raw:
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] = raw[i] ^ (1 << draw(st.integers(0, 7))) if op == "flip" else draw(st.integers(0, 255))
        elif op == "cut" and raw:
            del raw[draw(st.integers(0, len(raw) - 1)):]
        elif op == "grow":
            raw += draw(st.binary(min_size=1, max_size=16))
    return bytes(raw), vnet


@FUZZ
@given(mutated())
def test_mutated_packets_parse_or_drop(case):
    frame, vnet = case
    p = parse(frame, vnet)
    check_invariants(p, frame)
    if isinstance(p, Packet):
        # whatever parses can be answered without an exception
        build_icmp_unreachable(p, "port")
        build_tcp_rst(p)
        if p.proto in (TCP, UDP):
            a, b = (F4, L4) if p.version == 4 else (F6, L6)
            out = rewrite_endpoints(p, a, 1, b, 2)
            q = parse(bytes(out), vnet)
            assert isinstance(q, Packet) and (q.src, q.sport, q.dst, q.dport) == (a, 1, b, 2)


@FUZZ
@given(valid_packets())
def test_valid_packets_parse(raw):
    p = parse(raw, False)
    assert isinstance(p, Packet), p
    assert p.end == len(raw)


def _nat():
    return TcpNat(NatConfig(listener4=(L4, 1), listener6=(L6, 1), pool4="10.0.3.0/30",
                            pool6="fd00::3:0/126", max_flows=64, max_pending=16))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), max_size=12))
def test_nat_and_core_survive_garbage(cases):
    nat = _nat()
    core = RelayCore(CoreConfig(vnet=True, nat=nat.config))
    core_plain = RelayCore(CoreConfig(vnet=False, nat=nat.config))
    now = 0.0
    for frame, vnet in cases:
        now += 1.0
        p = parse(frame, vnet)
        if isinstance(p, Packet) and p.proto == TCP:
            r = nat.rewrite(p, now)
            if r.__class__.__name__ == "NewFlow":
                nat.connected(r.flow, now) if now % 2 else nat.failed(r.flow, "host")
        (core if vnet else core_plain).from_tun(frame, now)
    nat.expire(now + 1e6)
    core.expire(now + 1e6)
    assert len(nat) == 0 and len(core.nat) == 0 and len(core.udp) == 0


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([(A4, D4), (A6, D6)]), st.integers(1, 65535),
                          st.integers(1, 65535), st.sampled_from([SYN, ACK, SYN | ACK, PSH | ACK, 4, 1]),
                          st.booleans()), max_size=60))
def test_tcp_flows_from_random_segments(segs):
    nat = _nat()
    now = 0.0
    for (src, dst), sp, dp, flags, inbound in segs:
        now += 0.5
        if inbound:
            raw = tcp_packet(L4 if len(src) == 4 else L6, F4 if len(src) == 4 else F6, 1, dp, flags=flags)
        else:
            raw = tcp_packet(src, dst, sp, dp, flags=flags)
        p = parse(raw, False)
        r = nat.rewrite(p, now)
        if r.__class__.__name__ == "NewFlow":
            out = nat.connected(r.flow, now)
            assert out is not None
        assert len(nat) <= nat.config.max_flows
        assert nat.pending <= nat.config.max_pending
        assert nat.held_bytes <= nat.config.max_held_bytes


def test_safety_net_counts_as_malformed(monkeypatch):
    def boom(frame, off):
        raise struct.error("bug")
    monkeypatch.setattr(packets, "_parse", boom)
    assert packets.parse_frame(b"\x45" * 40).reason == "malformed"
