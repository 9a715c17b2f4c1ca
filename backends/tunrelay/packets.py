"""Parsing of the IP packets a TUN hands over, and the few packets we build.

Everything here is pure and total: ``parse_frame`` takes any bytes and
returns either a :class:`Packet` or a :class:`~.counters.Drop` naming why the
packet is refused; it never raises.  The child is hostile, so anything odd
(truncation, bad lengths, fragments, unknown protocols, long IPv6 extension
chains) is a Drop, not a best effort.

Design choices, for speed on the per-packet path:

* ``Packet`` is a ``NamedTuple``: immutable, no per-instance dict, and built
  by one C-level tuple allocation (about 4x cheaper than a frozen
  dataclass, whose ``__init__`` goes through ``object.__setattr__`` per
  field).
* Addresses are ``bytes`` (4 or 16), straight out of ``struct.unpack_from``:
  hashable dict keys, comparable, and written back into packets as they are.
  An ``ipaddress`` object costs about a microsecond to build and would be
  converted back to bytes for every rewrite; the I/O layer converts to text
  (``socket.inet_ntop``) once per flow, when it opens a socket.
* Offsets, not copies: a Packet keeps a memoryview of the whole frame and
  the offsets of the IP header, the transport header, the payload and the
  end.  Slices are made on demand (:meth:`Packet.payload_view`).  The views
  pin the caller's buffer: use a Packet before reusing that buffer.
* Checksums of incoming packets are not verified: the packets come from the
  child's kernel over a TUN (no wire corruption), often with partial
  checksums, and nothing the relay does depends on them being right.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from .checksum import checksum, pseudo_header_sum
from .counters import Drop, R
from .vnet import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VNET_HDR_LEN,
    VnetHdr,
)

__all__ = [
    "Packet",
    "parse_frame",
    "parse_ip",
    "TCP",
    "UDP",
    "ICMP",
    "ICMPV6",
    "FIN",
    "SYN",
    "RST",
    "PSH",
    "ACK",
    "ip_header",
    "build_udp",
    "build_echo_reply",
    "build_icmp_unreachable",
    "build_tcp_rst",
    "is_unicast",
    "may_send_error",
    "rewrite_endpoints",
    "endpoint_deltas",
    "MAX_EXT_HEADERS",
]

TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

ICMP_ECHO_REPLY, ICMP_UNREACH, ICMP_ECHO = 0, 3, 8
ICMP6_UNREACH, ICMP6_ECHO, ICMP6_ECHO_REPLY = 1, 128, 129
_ICMP4_ERRORS = frozenset((3, 4, 5, 11, 12))  # unreach, quench, redirect, time, param
# ICMPv6: types below 128 are errors (RFC 4443 section 2.1)

#: IPv6 extension headers walked before giving up (RFC 8200 section 4.1 lists
#: at most one of each, in order; a longer chain is an attack, not traffic).
MAX_EXT_HEADERS = 8
_HOP_BY_HOP, _ROUTING, _FRAGMENT, _ESP, _AH, _NO_NEXT, _DEST_OPTS = 0, 43, 44, 50, 51, 59, 60

_VNET = struct.Struct("<BBHHHH")
_V4 = struct.Struct("!BBHHHBBH4s4s")
_V6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIH")
_UDP = struct.Struct("!HHH")
_ICMP = struct.Struct("!BBHHH")
_U16 = struct.Struct("!H")

# Preallocated: a Drop is returned on every bad packet, no need to allocate.
D_TRUNCATED = Drop(R.TRUNCATED)
D_BAD_VNET = Drop(R.BAD_VNET)
D_BAD_VERSION = Drop(R.BAD_VERSION)
D_BAD_HEADER = Drop(R.BAD_HEADER)
D_BAD_LENGTH = Drop(R.BAD_LENGTH)
D_FRAGMENT = Drop(R.FRAGMENT)
D_BAD_EXT = Drop(R.BAD_EXT)
D_TOO_MANY_EXT = Drop(R.TOO_MANY_EXT)
D_ROUTING = Drop(R.ROUTING_HEADER)
D_NO_NEXT = Drop(R.NO_NEXT_HEADER)
D_UNSUPPORTED = Drop(R.UNSUPPORTED_PROTO)
D_BAD_PORT = Drop(R.BAD_PORT)
D_MALFORMED = Drop(R.MALFORMED)


class Packet(NamedTuple):
    """One parsed IPv4/IPv6 packet carrying TCP, UDP, ICMP or ICMPv6.

    All offsets index ``frame`` (the whole buffer, vnet header included).
    Per protocol: TCP fills ports, ``tcp_flags``, ``seq``, ``ack``; UDP the
    ports; ICMP echo puts the identifier in ``sport`` and the sequence in
    ``seq``; every ICMP message sets ``icmp_type``/``icmp_code``, and for
    ICMP errors ``payload`` is where the quoted packet starts.
    """

    frame: memoryview
    off: int  # IP header
    version: int  # 4 or 6
    proto: int  # transport protocol after any IPv6 extension headers
    src: bytes
    dst: bytes
    l4: int  # transport header
    payload: int  # transport payload
    end: int  # end of the IP packet (frame may carry trailing bytes)
    sport: int
    dport: int
    tcp_flags: int
    seq: int
    ack: int
    icmp_type: int
    icmp_code: int
    vnet: VnetHdr | None

    def payload_view(self) -> memoryview:
        return self.frame[self.payload:self.end]

    def ip_view(self) -> memoryview:
        """The IP packet without the vnet header (or trailing bytes)."""
        return self.frame[self.off:self.end]

    @property
    def payload_len(self) -> int:
        return self.end - self.payload

    @property
    def csum_partial(self) -> bool:
        v = self.vnet
        return v is not None and bool(v.flags & F_NEEDS_CSUM)

    @property
    def is_echo_request(self) -> bool:
        t = self.icmp_type
        return (self.proto == ICMP and t == ICMP_ECHO) or (self.proto == ICMPV6 and t == ICMP6_ECHO)

    @property
    def is_icmp_error(self) -> bool:
        if self.proto == ICMP:
            return self.icmp_type in _ICMP4_ERRORS
        return self.proto == ICMPV6 and self.icmp_type < 128


# NamedTuple.__new__ is a Python-level function; calling tuple.__new__ with
# the field tuple directly builds the same object about 40% faster.
_new = tuple.__new__


def parse_frame(frame, vnet: bool = True) -> Packet | Drop:
    """Parse one TUN frame: a virtio_net_hdr (if ``vnet``) then an IP packet."""
    try:
        return _parse(frame, VNET_HDR_LEN if vnet else 0)
    except Exception:  # pragma: no cover - safety net; tests call _parse directly
        return D_MALFORMED


def parse_ip(packet) -> Packet | Drop:
    """Parse a bare IP packet (no vnet header)."""
    return parse_frame(packet, vnet=False)


def _parse(frame, off: int) -> Packet | Drop:
    mv = frame if type(frame) is memoryview else memoryview(frame)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    n = len(mv)
    if n < off + 20:
        return D_TRUNCATED
    hdr = _new(VnetHdr, _VNET.unpack_from(mv, 0)) if off else None
    version = mv[off] >> 4
    if version == 4:
        vihl, _tos, tot, _id, frag, _ttl, proto, _ck, src, dst = _V4.unpack_from(mv, off)
        ihl = (vihl & 0x0F) << 2
        if ihl < 20:
            return D_BAD_HEADER
        if tot < ihl:  # also catches tot == 0 (IPv4 BIG TCP): not supported
            return D_BAD_LENGTH
        end = off + tot
        if end > n:
            return D_TRUNCATED
        if frag & 0x3FFF:  # MF set or non-zero offset: we never reassemble
            return D_FRAGMENT
        return _parse_l4(mv, off, 4, proto, src, dst, off + ihl, end, hdr)
    if version == 6:
        if n < off + 40:
            return D_TRUNCATED
        _vtf, plen, nh, _hop, src, dst = _V6.unpack_from(mv, off)
        if plen == 0:  # jumbogram (RFC 2675) or empty: nothing for us
            return D_BAD_LENGTH
        end = off + 40 + plen
        if end > n:
            return D_TRUNCATED
        p = off + 40
        walked = 0
        while nh != TCP and nh != UDP and nh != ICMPV6:
            if nh == _FRAGMENT:
                return D_FRAGMENT
            if nh == _NO_NEXT:
                return D_NO_NEXT
            if nh == _HOP_BY_HOP:
                if walked:  # only allowed right after the fixed header
                    return D_BAD_EXT
            elif nh != _ROUTING and nh != _DEST_OPTS:
                return D_UNSUPPORTED  # ESP, AH, Mobility, HIP, unknown...
            if walked == MAX_EXT_HEADERS:
                return D_TOO_MANY_EXT
            if p + 8 > end:
                return D_TRUNCATED
            # A routing header still to be processed means the final
            # destination is not ``dst``: NAT and policy would be fooled.
            if nh == _ROUTING and mv[p + 3] != 0:
                return D_ROUTING
            nh = mv[p]
            p += (mv[p + 1] + 1) << 3
            walked += 1
        if p > end:
            return D_TRUNCATED
        return _parse_l4(mv, off, 6, nh, src, dst, p, end, hdr)
    return D_BAD_VERSION


def _parse_l4(mv, off, version, proto, src, dst, l4, end, hdr) -> Packet | Drop:
    avail = end - l4
    if proto == TCP:
        if avail < 20:
            return D_TRUNCATED
        sport, dport, seq, ack, offflags = _TCP.unpack_from(mv, l4)
        thl = (offflags >> 12) << 2
        if thl < 20:
            return D_BAD_HEADER
        if thl > avail:
            return D_TRUNCATED
        if sport == 0 or dport == 0:
            return D_BAD_PORT
        if hdr is not None and (hdr.flags or hdr.gso_type):
            if not _vnet_ok(hdr, l4 - off, 16, GSO_TCPV4 if version == 4 else GSO_TCPV6):
                return D_BAD_VNET
        return _new(Packet, (mv, off, version, TCP, src, dst, l4, l4 + thl, end,
                             sport, dport, offflags & 0x1FF, seq, ack, 0, 0, hdr))
    if proto == UDP:
        if avail < 8:
            return D_TRUNCATED
        sport, dport, ulen = _UDP.unpack_from(mv, l4)
        if dport == 0:
            return D_BAD_PORT
        if hdr is not None and (hdr.flags or hdr.gso_type):
            if not _vnet_ok(hdr, l4 - off, 6, GSO_UDP_L4):
                return D_BAD_VNET
        # The UDP length must agree with the IP length (a shorter one would
        # leave trailing bytes of unclear meaning).  For a USO super-packet
        # the kernel writes the length of the whole thing, so it agrees too.
        if ulen != avail:
            return D_BAD_LENGTH
        return _new(Packet, (mv, off, version, UDP, src, dst, l4, l4 + 8, end,
                             sport, dport, 0, 0, 0, 0, 0, hdr))
    if (proto == ICMP and version == 4) or (proto == ICMPV6 and version == 6):
        if avail < 8:
            return D_TRUNCATED
        if hdr is not None and hdr.gso_type:
            return D_BAD_VNET
        itype, code, _ck, ident, seq = _ICMP.unpack_from(mv, l4)
        return _new(Packet, (mv, off, version, proto, src, dst, l4, l4 + 8, end,
                             ident, 0, 0, seq, 0, itype, code, hdr))
    return D_UNSUPPORTED


def _vnet_ok(hdr: VnetHdr, l4_rel: int, csum_off: int, gso: int) -> bool:
    """Check the kernel's virtio header against what we parsed.

    The relay patches the checksum at the transport header's usual place, so
    a partial checksum anywhere else, or a GSO type for another protocol,
    would make it corrupt the packet: refuse those.
    """
    if hdr.flags & F_NEEDS_CSUM:
        if hdr.csum_start != l4_rel or hdr.csum_offset != csum_off:
            return False
    gso_type = hdr.gso_type
    base = gso_type & ~GSO_ECN
    if base == GSO_NONE:
        return gso_type == GSO_NONE  # an ECN bit alone means nothing
    if base != gso or hdr.gso_size == 0 or not hdr.flags & F_NEEDS_CSUM:
        return False  # GSO always comes with a partial checksum
    return not (gso_type & GSO_ECN and gso == GSO_UDP_L4)


# --------------------------------------------------------------------------
# Address helpers


def address_family(addr: bytes) -> int:
    """AF_INET or AF_INET6 for a packed address (4 or 16 bytes), as sockets want it."""
    return socket.AF_INET if len(addr) == 4 else socket.AF_INET6


def is_unicast(addr: bytes) -> bool:
    """False for unspecified, multicast, broadcast/class E (v4) addresses.

    ICMP errors must never be sent to or about those (RFC 1122 3.2.2,
    RFC 4443 2.4(e)), and they are never valid flow endpoints.
    """
    if len(addr) == 4:
        return addr[0] < 224 and addr != b"\0\0\0\0"
    return addr[0] != 0xFF and addr != bytes(16)


# --------------------------------------------------------------------------
# Rewriting (the NAT's per-packet work)

_PORTS = struct.Struct("!HH")
_V4_CK_ADDRS = struct.Struct("!H4s4s")  # header checksum, then both addresses
_V6_ADDRS = struct.Struct("!16s16s")
_from_bytes = int.from_bytes


def endpoint_deltas(old_src: bytes, old_sport: int, old_dst: bytes, old_dport: int,
                    src: bytes, sport: int, dst: bytes, dport: int) -> tuple[int, int]:
    """(address delta, address+port delta) of a rewrite, for RFC 1624.

    These are the m' - m of eqn. 3 summed over the changed words.  They
    depend only on the old and new endpoints, so the NAT computes them once
    per flow and direction instead of once per packet.
    """
    da = (_from_bytes(src, "big") + _from_bytes(dst, "big")
          - _from_bytes(old_src, "big") - _from_bytes(old_dst, "big"))
    return da, da + sport + dport - old_sport - old_dport


def rewrite_endpoints(pkt: Packet, src: bytes, sport: int, dst: bytes, dport: int,
                      deltas: tuple[int, int] | None = None):
    """Return ``pkt``'s frame with new addresses and ports (TCP or UDP).

    Works in place when the frame is writable (a bytearray the I/O layer
    read into, then wrote back: no copy at all); otherwise copies once.
    The result is the whole frame, vnet header included, cut at the end of
    the IP packet, ready to write to the TUN.  ``src``/``dst`` must have the
    packet's address length.  ``deltas``, if given, must be
    :func:`endpoint_deltas` of exactly the packet's endpoints and the new ones.

    Checksums follow RFC 1624 eqn. 3 with the difference of the old and new
    words, so the cost does not depend on the payload size.  The IPv4
    header checksum covers the addresses.  The transport checksum covers
    addresses (pseudo-header) and ports, except when it is partial
    (NEEDS_CSUM): then it holds the pseudo-header sum only and the ports are
    summed by the kernel later.  A UDP/IPv4 checksum of 0 ("none") stays 0.
    The arithmetic of checksum.csum_update is inlined: this is the hottest
    path of the relay, and a call costs as much as the arithmetic.
    """
    if deltas is None:
        deltas = endpoint_deltas(pkt.src, pkt.sport, pkt.dst, pkt.dport, src, sport, dst, dport)
    da, dfull = deltas
    f = pkt.frame
    end = pkt.end
    if f.readonly:
        f = bytearray(f[:end])  # struct.pack_into writes into it directly
    elif end != len(f):
        f = f[:end]
    o = pkt.off
    if pkt.version == 4:
        r = (0xFFFF - _U16.unpack_from(f, o + 10)[0] + da) % 0xFFFF
        _V4_CK_ADDRS.pack_into(f, o + 10, 0xFFFF - r if r else 0, src, dst)
    else:
        _V6_ADDRS.pack_into(f, o + 8, src, dst)
    l4 = pkt.l4
    udp = pkt.proto == UDP
    co = l4 + (6 if udp else 16)
    ck = _U16.unpack_from(f, co)[0]
    v = pkt.vnet
    if v is not None and v.flags & F_NEEDS_CSUM:
        ck = (ck + da) % 0xFFFF or 0xFFFF  # checksum.partial_update
    elif not (udp and ck == 0 and pkt.version == 4):
        r = (0xFFFF - ck + dfull) % 0xFFFF  # checksum.csum_update
        ck = 0xFFFF - r if r else (0xFFFF if udp else 0)  # UDP sends 0 as 0xFFFF
    _PORTS.pack_into(f, l4, sport, dport)
    _U16.pack_into(f, co, ck)
    return f


# --------------------------------------------------------------------------
# Builders.  All return bare IP packets (bytes) with ``prefix`` in front:
# the caller passes the vnet header as prefix, so a packet is assembled by
# a single join (one copy of the payload, not two).

_IPV4_HDR = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HDR = struct.Struct("!IHBB16s16s")
_ICMP_HDR = struct.Struct("!BBHHH")
_TCP_HDR = struct.Struct("!HHIIHHHH")

#: RFC 1812 4.3.2.3: an ICMPv4 error should not exceed 576 bytes in all.
ICMP4_ERROR_MAX = 576
#: RFC 4443 2.4(c): an ICMPv6 error must not exceed the minimum MTU, 1280.
ICMP6_ERROR_MAX = 1280

UNREACH_CODES = {
    # kind: (ICMPv4 type 3 code, ICMPv6 type 1 code)
    "net": (0, 0),
    "host": (1, 3),
    "port": (3, 4),
    "admin": (13, 1),
}


def ip_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl: int = 64) -> bytes:
    """IPv4 (with checksum, DF set, id 0) or IPv6 header; family from ``src``."""
    if len(src) == 4:
        h = _IPV4_HDR.pack(0x45, 0, 20 + payload_len, 0, 0x4000, ttl, proto, 0, src, dst)
        return h[:10] + _U16.pack(checksum(h)) + h[12:]
    return _IPV6_HDR.pack(0x60000000, payload_len, proto, ttl, src, dst)


def build_udp(src: bytes, dst: bytes, sport: int, dport: int, payload, *,
              ttl: int = 64, partial: bool = False, prefix: bytes = b"") -> bytes:
    """A UDP datagram (IPv4 or IPv6 from the address length).

    ``partial=True`` leaves only the pseudo-header sum in the checksum field,
    for a prefix made by ``vnet.csum_header(len(ip header), 6)``: the kernel
    then never needs the payload summed.  Otherwise the checksum is complete
    (0 is sent as 0xFFFF, RFC 768).
    """
    ulen = 8 + len(payload)
    ph = pseudo_header_sum(src, dst, UDP, ulen)
    if partial:
        ck = ph % 0xFFFF or 0xFFFF
    else:
        ck = checksum(payload, ph + sport + dport + ulen) or 0xFFFF
    return b"".join((prefix, ip_header(src, dst, UDP, ulen, ttl),
                     _UDP.pack(sport, dport, ulen), _U16.pack(ck), payload))


def build_echo_reply(src: bytes, dst: bytes, ident: int, seq: int, payload, *,
                     ttl: int = 64, prefix: bytes = b"") -> bytes:
    """ICMP echo reply (type 0) or ICMPv6 echo reply (type 129)."""
    n = 8 + len(payload)
    if len(src) == 4:
        typ, proto, ph = ICMP_ECHO_REPLY, ICMP, 0
    else:
        typ, proto, ph = ICMP6_ECHO_REPLY, ICMPV6, pseudo_header_sum(src, dst, ICMPV6, n)
    ck = checksum(payload, ph + (typ << 8) + ident + seq)
    return b"".join((prefix, ip_header(src, dst, proto, n, ttl),
                     _ICMP_HDR.pack(typ, 0, ck, ident, seq), payload))


def may_send_error(pkt: Packet) -> bool:
    """RFC 1122 3.2.2 / RFC 4443 2.4(e): never an ICMP error about an ICMP
    error, a packet to or from a non-unicast address."""
    return not pkt.is_icmp_error and is_unicast(pkt.src) and is_unicast(pkt.dst)


def build_icmp_unreachable(pkt: Packet, kind: str = "port", *, src: bytes | None = None,
                           ttl: int = 64, prefix: bytes = b"") -> bytes | None:
    """Destination unreachable about ``pkt``, addressed back to its sender.

    ``kind`` is "port", "host", "net" or "admin" (administratively
    prohibited).  The error comes from ``src`` (default: the packet's
    destination, i.e. "the far end said so").  It quotes as much of the
    offending packet as fits in 576 (IPv4) or 1280 (IPv6) bytes: at least
    the IP header and 8 bytes, as RFC 792 requires.  Returns None where the
    RFCs forbid an error.
    """
    if not may_send_error(pkt):
        return None
    code4, code6 = UNREACH_CODES[kind]
    if src is None:
        src = pkt.dst
    if len(src) != len(pkt.src):
        return None
    if pkt.version == 4:
        quote = pkt.frame[pkt.off:min(pkt.end, pkt.off + ICMP4_ERROR_MAX - 28)]
        typ, proto, code, ph = ICMP_UNREACH, ICMP, code4, 0
    else:
        quote = pkt.frame[pkt.off:min(pkt.end, pkt.off + ICMP6_ERROR_MAX - 48)]
        typ, proto, code = ICMP6_UNREACH, ICMPV6, code6
        ph = pseudo_header_sum(src, pkt.src, ICMPV6, 8 + len(quote))
    ck = checksum(quote, ph + (typ << 8) + code)
    return b"".join((prefix, ip_header(src, pkt.src, proto, 8 + len(quote), ttl),
                     _ICMP_HDR.pack(typ, code, ck, 0, 0), quote))


def build_tcp_rst(pkt: Packet, *, ttl: int = 64, prefix: bytes = b"") -> bytes | None:
    """The RST a TCP stack sends for a segment that matches no connection.

    RFC 9293 3.10.7.1: if the segment has ACK, the RST takes its sequence
    number from that ACK; otherwise (a SYN, typically) the RST has seq 0 and
    acknowledges everything the segment occupied (payload, SYN, FIN).
    Returns None for a RST (never answer one) or a non-unicast peer.
    """
    flags = pkt.tcp_flags
    if pkt.proto != TCP or flags & RST or not may_send_error(pkt):
        return None
    if flags & ACK:
        seq, ack, rflags = pkt.ack, 0, RST
    else:
        seg_len = pkt.end - pkt.payload + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        seq, ack, rflags = 0, (pkt.seq + seg_len) & 0xFFFFFFFF, RST | ACK
    src, dst = pkt.dst, pkt.src
    hdr = _TCP_HDR.pack(pkt.dport, pkt.sport, seq, ack, (5 << 12) | rflags, 0, 0, 0)
    ck = checksum(hdr, pseudo_header_sum(src, dst, TCP, 20))
    return b"".join((prefix, ip_header(src, dst, TCP, 20, ttl), hdr[:16], _U16.pack(ck), hdr[18:]))
