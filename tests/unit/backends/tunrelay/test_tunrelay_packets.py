"""Parsing hand-built packets, drop reasons, and the packet builders."""

from __future__ import annotations

import struct

import pytest

from netwrap.backends.tunrelay.counters import Drop
from netwrap.backends.tunrelay.packets import (
    ICMP4_ERROR_MAX,
    ICMP6_ERROR_MAX,
    MAX_EXT_HEADERS,
    Packet,
    build_echo_reply,
    build_icmp_unreachable,
    build_tcp_rst,
    build_udp,
    is_unicast,
    parse_frame,
    parse_ip,
)
from netwrap.backends.tunrelay.vnet import GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, csum_header

from _tr_ref import (
    A4, A6, ACK, D4, D6, FIN, ICMP, ICMPV6, PSH, RST, SYN, TCP, UDP,
    complete_partial, echo_request, icmp_message, ip_ok, ipv4, ipv6, l4_ok, ref_csum,
    tcp_packet, tcp_segment, udp_datagram, udp_packet, vnet_hdr,
)


def reason(r):
    assert isinstance(r, Drop), r
    return r.reason


# -- golden packets ----------------------------------------------------------

def test_golden_tcp_syn_v4_literal():
    # A SYN 10.0.2.100:40000 -> 93.184.216.34:443 written out by hand.
    hexpkt = (
        "4500002c1234400040060000" "0a000264" "5db8d822"   # IPv4, csum patched below
        "9c4001bb" "000003e8" "00000000" "6002faf0" "00000000" "020405b4"
    )
    pkt = bytearray(bytes.fromhex(hexpkt))
    pkt[10:12] = struct.pack("!H", ref_csum(bytes(pkt[:20])))
    p = parse_ip(bytes(pkt))
    assert isinstance(p, Packet)
    assert (p.version, p.proto, p.src, p.dst) == (4, TCP, A4, D4)
    assert (p.sport, p.dport, p.seq, p.ack, p.tcp_flags) == (40000, 443, 1000, 0, SYN)
    assert (p.off, p.l4, p.payload, p.end) == (0, 20, 44, 44)
    assert p.payload_len == 0 and not p.csum_partial and p.vnet is None


def test_tcp_with_ip_options_and_payload():
    raw = tcp_packet(A4, D4, 1234, 80, 7, 9, PSH | ACK, b"GET / HTTP/1.0\r\n\r\n",
                     options=b"\x01\x01\x01\x00")  # NOP NOP NOP EOL
    p = parse_ip(raw)
    assert p.l4 == 24 and p.payload == 44 and p.end == len(raw)
    assert bytes(p.payload_view()) == b"GET / HTTP/1.0\r\n\r\n"
    assert p.tcp_flags == PSH | ACK and (p.seq, p.ack) == (7, 9)
    assert bytes(p.ip_view()) == raw


def test_udp_v6_with_extension_headers():
    payload = b"\x12\x34" + b"q" * 30
    dg = udp_datagram(A6, D6, 5353, 53, payload)
    # hop-by-hop (8 bytes, PadN) -> destination options (8 bytes) -> UDP
    hbh = bytes([60, 0, 1, 4, 0, 0, 0, 0])
    dst = bytes([UDP, 0, 1, 4, 0, 0, 0, 0])
    raw = ipv6(A6, D6, UDP, dg, ext=hbh + dst, first_nh=0)
    p = parse_ip(raw)
    assert isinstance(p, Packet)
    assert (p.proto, p.l4, p.sport, p.dport) == (UDP, 56, 5353, 53)
    assert bytes(p.payload_view()) == payload


def test_echo_request_both_families():
    p = parse_ip(echo_request(A4, D4, 0xBEEF, 3, b"ping"))
    assert (p.proto, p.icmp_type, p.sport, p.seq) == (ICMP, 8, 0xBEEF, 3)
    assert p.is_echo_request and not p.is_icmp_error
    p6 = parse_ip(echo_request(A6, D6, 7, 9, b"x" * 56))
    assert (p6.proto, p6.icmp_type, p6.sport, p6.seq) == (ICMPV6, 128, 7, 9)
    assert p6.is_echo_request and p6.payload_len == 56


def test_vnet_frame_with_trailing_bytes():
    raw = udp_packet(A4, D4, 1000, 2000, b"abc")
    p = parse_frame(vnet_hdr() + raw + b"TRAILER")
    assert p.off == 10 and p.end == 10 + len(raw) and bytes(p.payload_view()) == b"abc"


def test_partial_checksum_and_gso_accepted():
    raw = tcp_packet(A4, D4, 1, 2, flags=ACK, payload=b"z" * 3000)
    p = parse_frame(vnet_hdr(1, GSO_TCPV4, 40, 1448, 20, 16) + raw)
    assert isinstance(p, Packet) and p.csum_partial and p.vnet.gso_size == 1448
    raw6 = tcp_packet(A6, D6, 1, 2, flags=ACK, payload=b"z" * 3000)
    assert isinstance(parse_frame(vnet_hdr(1, GSO_TCPV6, 60, 1428, 40, 16) + raw6), Packet)
    u = udp_packet(A4, D4, 1, 2, b"u" * 4000)
    assert isinstance(parse_frame(vnet_hdr(1, GSO_UDP_L4, 28, 1000, 20, 6) + u), Packet)


# -- drops -------------------------------------------------------------------

@pytest.mark.parametrize("frame,why", [
    (b"", "truncated"),
    (b"\x45" + bytes(18), "truncated"),
    (b"\x75" + bytes(40), "bad_version"),
    (bytes(40), "bad_version"),
])
def test_drop_basic(frame, why):
    assert reason(parse_ip(frame)) == why


def test_drop_ipv4_header_problems():
    raw = bytearray(udp_packet(A4, D4, 1, 2, b"hello"))
    bad = bytearray(raw); bad[0] = 0x44
    assert reason(parse_ip(bytes(bad))) == "bad_header"
    bad = bytearray(raw); bad[2:4] = struct.pack("!H", 10)
    assert reason(parse_ip(bytes(bad))) == "bad_length"
    bad = bytearray(raw); bad[2:4] = struct.pack("!H", 0)
    assert reason(parse_ip(bytes(bad))) == "bad_length"
    assert reason(parse_ip(bytes(raw[:-1]))) == "truncated"
    bad = bytearray(raw); bad[0] = 0x4F  # ihl 60 > packet
    assert reason(parse_ip(bytes(bad))) in ("bad_length", "truncated")


@pytest.mark.parametrize("frag", [0x2000, 0x0001, 0x3FFF, 0x6000])
def test_drop_ipv4_fragments(frag):
    assert reason(parse_ip(ipv4(A4, D4, UDP, udp_datagram(A4, D4, 1, 2, b"x"), frag=frag))) == "fragment"


def test_df_alone_is_not_a_fragment():
    assert isinstance(parse_ip(ipv4(A4, D4, UDP, udp_datagram(A4, D4, 1, 2), frag=0x4000)), Packet)


def test_drop_ipv6_chains():
    dg = udp_datagram(A6, D6, 1, 2, b"x")
    frag = bytes([UDP, 0, 0, 1, 0, 0, 0, 1])
    assert reason(parse_ip(ipv6(A6, D6, UDP, dg, ext=frag, first_nh=44))) == "fragment"
    routing = bytes([UDP, 0, 0, 1, 0, 0, 0, 0])  # segments left 1
    assert reason(parse_ip(ipv6(A6, D6, UDP, dg, ext=routing, first_nh=43))) == "routing_header"
    routing0 = bytes([UDP, 0, 0, 0, 0, 0, 0, 0])  # segments left 0: fine
    assert isinstance(parse_ip(ipv6(A6, D6, UDP, dg, ext=routing0, first_nh=43)), Packet)
    late_hbh = bytes([0, 0, 1, 4, 0, 0, 0, 0]) + bytes([UDP, 0, 1, 4, 0, 0, 0, 0])
    assert reason(parse_ip(ipv6(A6, D6, UDP, dg, ext=late_hbh, first_nh=60))) == "bad_ext_header"
    chain = b"".join(bytes([60, 0, 1, 4, 0, 0, 0, 0]) for _ in range(MAX_EXT_HEADERS + 1))
    chain = chain[:-8] + bytes([UDP, 0, 1, 4, 0, 0, 0, 0])
    assert reason(parse_ip(ipv6(A6, D6, UDP, dg, ext=chain, first_nh=60))) == "too_many_ext_headers"
    ok_chain = chain[8:]  # exactly MAX_EXT_HEADERS
    assert isinstance(parse_ip(ipv6(A6, D6, UDP, dg, ext=ok_chain, first_nh=60)), Packet)
    assert reason(parse_ip(ipv6(A6, D6, 59, b"", ext=b"", first_nh=59) + b"")) == "bad_length"
    assert reason(parse_ip(ipv6(A6, D6, 59, b"12345678"))) == "no_next_header"
    assert reason(parse_ip(ipv6(A6, D6, 50, b"12345678"))) == "unsupported_proto"
    long_ext = bytes([UDP, 255, 0, 0, 0, 0, 0, 0])  # claims 2048 bytes
    assert reason(parse_ip(ipv6(A6, D6, UDP, dg, ext=long_ext, first_nh=60))) == "truncated"


def test_drop_transport_problems():
    assert reason(parse_ip(ipv4(A4, D4, 47, b"gre-stuff"))) == "unsupported_proto"
    assert reason(parse_ip(ipv4(A4, D4, ICMPV6, b"\x80" + bytes(7)))) == "unsupported_proto"
    assert reason(parse_ip(ipv4(A4, D4, TCP, bytes(19)))) == "truncated"
    seg = bytearray(tcp_segment(A4, D4, 1, 2, 0, 0, SYN)); seg[12] = 0x40  # doff 4
    assert reason(parse_ip(ipv4(A4, D4, TCP, bytes(seg)))) == "bad_header"
    seg[12] = 0xF0  # doff 15 > segment
    assert reason(parse_ip(ipv4(A4, D4, TCP, bytes(seg)))) == "truncated"
    assert reason(parse_ip(tcp_packet(A4, D4, 0, 80))) == "bad_port"
    assert reason(parse_ip(udp_packet(A4, D4, 1, 0))) == "bad_port"
    dg = bytearray(udp_datagram(A4, D4, 1, 2, b"abcd")); dg[4:6] = struct.pack("!H", 9)
    assert reason(parse_ip(ipv4(A4, D4, UDP, bytes(dg)))) == "bad_length"
    assert reason(parse_ip(ipv4(A4, D4, ICMP, b"\x08\x00\x00"))) == "truncated"


def test_drop_inconsistent_vnet():
    tcp = tcp_packet(A4, D4, 1, 2, flags=ACK, payload=b"p" * 100)
    for hdr in (vnet_hdr(1, 0, 0, 0, 20, 6),          # csum at the UDP place
                vnet_hdr(1, 0, 0, 0, 0, 16),          # wrong start
                vnet_hdr(1, GSO_TCPV6, 40, 1000, 20, 16),  # v6 GSO on v4
                vnet_hdr(1, GSO_TCPV4, 40, 0, 20, 16),  # gso_size 0
                vnet_hdr(0, GSO_TCPV4, 40, 1000, 0, 0),  # GSO without NEEDS_CSUM
                vnet_hdr(1, 3, 40, 1000, 20, 16),      # UFO
                vnet_hdr(0, 0x80, 0, 0, 0, 0)):        # ECN bit alone
        assert reason(parse_frame(hdr + tcp)) == "bad_vnet", hdr
    assert reason(parse_frame(vnet_hdr(1, GSO_UDP_L4 | 0x80, 28, 100, 20, 6)
                              + udp_packet(A4, D4, 1, 2, b"x" * 300))) == "bad_vnet"
    assert reason(parse_frame(vnet_hdr(0, GSO_TCPV4) + echo_request(A4, D4, 1, 1))) == "bad_vnet"
    assert reason(parse_frame(bytes(9))) == "truncated"


def test_parse_accepts_any_buffer_type():
    raw = udp_packet(A4, D4, 1, 2, b"x")
    for buf in (raw, bytearray(raw), memoryview(raw), memoryview(bytearray(raw))):
        assert isinstance(parse_ip(buf), Packet)
    assert isinstance(parse_ip(memoryview(raw).cast("c")), Packet)


# -- builders ----------------------------------------------------------------

@pytest.mark.parametrize("src,dst", [(D4, A4), (D6, A6)])
@pytest.mark.parametrize("size", [0, 1, 511, 1472])
def test_build_udp_is_valid(src, dst, size):
    payload = bytes(range(256)) * 6
    payload = payload[:size]
    raw = build_udp(src, dst, 53, 40000, payload)
    assert ip_ok(raw) and l4_ok(raw)
    assert raw == udp_packet(src, dst, 53, 40000, payload, **({"ident": 0} if len(src) == 4 else {}))
    p = parse_ip(raw)
    assert (p.src, p.dst, p.sport, p.dport) == (src, dst, 53, 40000)
    assert bytes(p.payload_view()) == payload


def test_build_udp_zero_checksum_sent_as_ffff():
    # find a payload whose checksum computes to 0: it must go out as 0xFFFF
    for i in range(70000):
        raw = build_udp(D4, A4, 1, 2, i.to_bytes(2, "big"))
        if raw[26:28] == b"\xff\xff":
            assert l4_ok(raw)
            break
    else:
        pytest.fail("no zero-checksum datagram found")


@pytest.mark.parametrize("src,dst", [(D4, A4), (D6, A6)])
def test_build_udp_partial_completes_like_the_kernel(src, dst):
    iphl = 20 if len(src) == 4 else 40
    frame = build_udp(src, dst, 53, 4444, b"answer" * 99, partial=True, prefix=csum_header(iphl, 6))
    full = complete_partial(frame)
    assert full == build_udp(src, dst, 53, 4444, b"answer" * 99)
    assert l4_ok(full) and isinstance(parse_frame(frame), Packet)


@pytest.mark.parametrize("src,dst", [(D4, A4), (D6, A6)])
def test_build_echo_reply(src, dst):
    raw = build_echo_reply(src, dst, 0x1234, 77, b"payload!")
    assert ip_ok(raw) and l4_ok(raw)
    v4 = len(src) == 4
    want = icmp_message(src, dst, 0 if v4 else 129, 0, struct.pack("!HH", 0x1234, 77), b"payload!")
    assert raw.endswith(want)
    p = parse_ip(raw)
    assert (p.icmp_type, p.sport, p.seq) == ((0 if v4 else 129), 0x1234, 77)


@pytest.mark.parametrize("kind,c4,c6", [("port", 3, 4), ("host", 1, 3), ("admin", 13, 1), ("net", 0, 0)])
def test_build_unreachable_codes(kind, c4, c6):
    for src, dst, code, typ in ((A4, D4, c4, 3), (A6, D6, c6, 1)):
        off = udp_packet(src, dst, 5000, 9, b"data")
        raw = build_icmp_unreachable(parse_ip(off), kind)
        assert ip_ok(raw) and l4_ok(raw)
        p = parse_ip(raw)
        assert (p.src, p.dst, p.icmp_type, p.icmp_code) == (dst, src, typ, code)
        assert bytes(p.payload_view()) == off  # small: quoted whole
        assert p.is_icmp_error


def test_unreachable_quote_limits():
    big4 = udp_packet(A4, D4, 1, 2, b"x" * 3000)
    raw = build_icmp_unreachable(parse_ip(big4), "port")
    assert len(raw) == ICMP4_ERROR_MAX and raw[28:] == big4[:ICMP4_ERROR_MAX - 28]
    big6 = udp_packet(A6, D6, 1, 2, b"x" * 3000)
    raw6 = build_icmp_unreachable(parse_ip(big6), "port")
    assert len(raw6) == ICMP6_ERROR_MAX and raw6[48:] == big6[:ICMP6_ERROR_MAX - 48]
    assert l4_ok(raw) and l4_ok(raw6)


def test_unreachable_custom_source_and_refusals():
    off = parse_ip(udp_packet(A4, D4, 1, 2, b"q"))
    gw = bytes([10, 0, 2, 2])
    assert parse_ip(build_icmp_unreachable(off, "host", src=gw)).src == gw
    assert build_icmp_unreachable(off, "host", src=D6) is None  # wrong family
    err = parse_ip(ipv4(A4, D4, ICMP, icmp_message(A4, D4, 3, 1, bytes(4), bytes(28))))
    assert build_icmp_unreachable(err, "port") is None  # never about an ICMP error
    mc = parse_ip(udp_packet(A4, bytes([239, 1, 2, 3]), 1, 2))
    assert build_icmp_unreachable(mc, "port") is None
    bc = parse_ip(udp_packet(A4, bytes([255] * 4), 1, 2))
    assert build_icmp_unreachable(bc, "port") is None
    unspec = parse_ip(udp_packet(bytes(4), D4, 68, 67))
    assert build_icmp_unreachable(unspec, "port") is None
    mc6 = parse_ip(udp_packet(A6, bytes.fromhex("ff02" + "00" * 13 + "fb"), 5353, 5353))
    assert build_icmp_unreachable(mc6, "port") is None
    # an echo request is not an error: it may be answered with one
    assert build_icmp_unreachable(parse_ip(echo_request(A4, D4, 1, 1)), "host") is not None


@pytest.mark.parametrize("src,dst", [(A4, D4), (A6, D6)])
def test_rst_in_reply_to_syn(src, dst):
    syn = parse_ip(tcp_packet(src, dst, 40000, 443, seq=0xFFFFFFFF, flags=SYN))
    raw = build_tcp_rst(syn)
    assert ip_ok(raw) and l4_ok(raw)
    p = parse_ip(raw)
    assert (p.src, p.dst, p.sport, p.dport) == (dst, src, 443, 40000)
    assert p.tcp_flags == RST | ACK and p.seq == 0 and p.ack == 0  # ISN+1 wraps
    assert raw.endswith(tcp_segment(dst, src, 443, 40000, 0, 0, RST | ACK, window=0)[:20])


def test_rst_for_segments():
    seg = parse_ip(tcp_packet(A4, D4, 1, 2, seq=100, ack=555, flags=ACK | PSH, payload=b"abc"))
    p = parse_ip(build_tcp_rst(seg))
    assert p.tcp_flags == RST and p.seq == 555
    fin = parse_ip(tcp_packet(A4, D4, 1, 2, seq=100, flags=FIN, payload=b"ab"))
    p = parse_ip(build_tcp_rst(fin))
    assert p.tcp_flags == RST | ACK and p.ack == 103
    assert build_tcp_rst(parse_ip(tcp_packet(A4, D4, 1, 2, flags=RST))) is None
    assert build_tcp_rst(parse_ip(udp_packet(A4, D4, 1, 2))) is None
    assert build_tcp_rst(parse_ip(tcp_packet(A4, bytes([224, 0, 0, 1]), 1, 2))) is None


def test_builders_take_a_prefix():
    pre = b"0123456789"
    assert build_udp(D4, A4, 1, 2, b"x", prefix=pre)[:10] == pre
    syn = parse_ip(tcp_packet(A4, D4, 1, 2))
    assert build_tcp_rst(syn, prefix=pre)[10:] == build_tcp_rst(syn)


def test_is_unicast():
    assert is_unicast(A4) and is_unicast(D6)
    assert not is_unicast(bytes(4)) and not is_unicast(bytes(16))
    assert not is_unicast(bytes([224, 0, 0, 1])) and not is_unicast(bytes([255] * 4))
    assert not is_unicast(bytes([0xFF]) + bytes(15))


def test_address_family_follows_the_packed_length():
    import socket

    from netwrap.backends.tunrelay.packets import address_family

    assert address_family(socket.inet_pton(socket.AF_INET, "192.0.2.1")) == socket.AF_INET
    assert address_family(socket.inet_pton(socket.AF_INET6, "2001:db8::1")) == socket.AF_INET6
