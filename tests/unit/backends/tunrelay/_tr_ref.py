"""Independent, deliberately naive reference code for the tunrelay tests.

Nothing here imports the code under test: checksums are summed word by word
with end-around carry (RFC 1071 section 4.1, literally), and packets are
assembled field by field with explicit pseudo-headers, so a bug shared by
the implementation and its tests is unlikely.
"""

from __future__ import annotations

import struct

from inet_checksum import ref_csum, ref_sum  # noqa: F401 (re-exported to the tunrelay tests)

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
FIN, SYN, RST, PSH, ACK = 1, 2, 4, 8, 16

A4 = bytes([10, 0, 2, 100])  # the child
D4 = bytes([93, 184, 216, 34])  # a far end
L4 = bytes([10, 0, 2, 100])  # listener address (the child's own)
F4 = bytes([10, 0, 3, 1])  # first fake peer
A6 = bytes.fromhex("fd000000000000000000000000000064")
D6 = bytes.fromhex("26064700000000000000000000001111")
L6 = A6
F6 = bytes.fromhex("fd000000000000000000000000030001")


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + bytes([0, proto]) + struct.pack("!H", length)
    return src + dst + struct.pack("!I", length) + b"\0\0\0" + bytes([proto])


def ipv4(src, dst, proto, payload, *, ident=0x1234, ttl=64, frag=0x4000, options=b"", tos=0):
    assert len(options) % 4 == 0
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + len(payload), ident, frag,
                      ttl, proto, 0, src, dst) + options
    hdr = hdr[:10] + struct.pack("!H", ref_csum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src, dst, nh, payload, *, hop=64, ext=b"", first_nh=None):
    """``ext`` is a pre-built extension chain whose first header type is
    ``first_nh`` and whose last next-header field must already be ``nh``."""
    body = ext + payload
    return struct.pack("!IHBB16s16s", 0x60000000, len(body),
                       nh if first_nh is None else first_nh, hop, src, dst) + body


def ip(src, dst, proto, payload, **kw):
    return (ipv4 if len(src) == 4 else ipv6)(src, dst, proto, payload, **kw)


def tcp_segment(src, dst, sport, dport, seq, ack, flags, payload=b"", *, options=b"", window=64240):
    assert len(options) % 4 == 0
    off = 5 + len(options) // 4
    hdr = struct.pack("!HHIIHHHH", sport, dport, seq, ack, (off << 12) | flags, window, 0, 0) + options
    seg = hdr + payload
    ck = ref_csum(pseudo(src, dst, TCP, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", ck) + seg[18:]


def udp_datagram(src, dst, sport, dport, payload=b""):
    n = 8 + len(payload)
    dg = struct.pack("!HHHH", sport, dport, n, 0) + payload
    ck = ref_csum(pseudo(src, dst, UDP, n) + dg) or 0xFFFF
    return dg[:6] + struct.pack("!H", ck) + dg[8:]


def icmp_message(src, dst, typ, code, rest: bytes, payload=b""):
    msg = struct.pack("!BBH", typ, code, 0) + rest + payload
    if len(src) == 4:
        ck = ref_csum(msg)
    else:
        ck = ref_csum(pseudo(src, dst, ICMPV6, len(msg)) + msg)
    return msg[:2] + struct.pack("!H", ck) + msg[4:]


def tcp_packet(src, dst, sport, dport, seq=1000, ack=0, flags=SYN, payload=b"", **kw):
    return ip(src, dst, TCP, tcp_segment(src, dst, sport, dport, seq, ack, flags, payload), **kw)


def udp_packet(src, dst, sport, dport, payload=b"", **kw):
    return ip(src, dst, UDP, udp_datagram(src, dst, sport, dport, payload), **kw)


def echo_request(src, dst, ident, seq, payload=b"", **kw):
    v4 = len(src) == 4
    msg = icmp_message(src, dst, 8 if v4 else 128, 0, struct.pack("!HH", ident, seq), payload)
    return ip(src, dst, ICMP if v4 else ICMPV6, msg, **kw)


def vnet_hdr(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


# -- verification ---------------------------------------------------------

def l4_bounds(pkt: bytes):
    """(proto, l4 offset) of a packet built by the helpers above (no ext
    headers other than those the caller knows about: v6 uses the fixed nh)."""
    if pkt[0] >> 4 == 4:
        return pkt[9], (pkt[0] & 15) * 4
    return pkt[6], 40


def ip_ok(pkt: bytes) -> bool:
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        if ref_sum(pkt[:ihl]) != 0xFFFF:
            return False
        return struct.unpack("!H", pkt[2:4])[0] == len(pkt)
    return struct.unpack("!H", pkt[4:6])[0] == len(pkt) - 40


def l4_ok(pkt: bytes) -> bool:
    """Full verification of the transport checksum (sum over all must be
    0xFFFF), pseudo-header included; UDP/IPv4 checksum 0 means none."""
    proto, off = l4_bounds(pkt)
    seg = pkt[off:]
    if pkt[0] >> 4 == 4:
        src, dst = pkt[12:16], pkt[16:20]
    else:
        src, dst = pkt[8:24], pkt[24:40]
    if proto == UDP and pkt[0] >> 4 == 4 and seg[6:8] == b"\0\0":
        return True
    if proto == ICMP:
        return ref_sum(seg) == 0xFFFF
    return ref_sum(pseudo(src, dst, proto, len(seg)) + seg) == 0xFFFF


def complete_partial(frame: bytes) -> bytes:
    """What the kernel does with a NEEDS_CSUM frame: sum from csum_start
    (the partial value in the field included), fold, complement, store."""
    flags, _g, _h, _s, start, off = struct.unpack("<BBHHHH", frame[:10])
    pkt = bytearray(frame[10:])
    if flags & 1:
        ck = ref_csum(bytes(pkt[start:]))
        pkt[start + off:start + off + 2] = struct.pack("!H", ck)
    return bytes(pkt)


def with_partial(pkt: bytes) -> bytes:
    """Turn a complete TCP/UDP packet into what a TUN with CSUM offload
    hands over: vnet NEEDS_CSUM, field = folded pseudo-header sum."""
    proto, off = l4_bounds(pkt)
    seg_len = len(pkt) - off
    if pkt[0] >> 4 == 4:
        src, dst = pkt[12:16], pkt[16:20]
    else:
        src, dst = pkt[8:24], pkt[24:40]
    co = 16 if proto == TCP else 6
    s = ref_sum(pseudo(src, dst, proto, seg_len))
    body = bytearray(pkt)
    body[off + co:off + co + 2] = struct.pack("!H", s)
    return vnet_hdr(1, 0, 0, 0, off, co) + bytes(body)
