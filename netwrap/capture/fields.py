"""The few fields of a captured packet the egress views need, read without copying.

Captured packets are only looked at, never trusted: anything short or odd is
None (the child view still stores it as it was). IPv6 extension headers are
not walked: a packet whose next header is not TCP, UDP or ICMPv6 has no flow
here, which only means the synthesised views leave it out.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from netwrap.capture.ring import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_RAW

TCP = 6
UDP = 17
ICMP = 1
ICMPV6 = 58
TCP_SYN = 0x02
TCP_ACK = 0x10
ICMP_ECHO_REQUEST = {4: 8, 6: 128}
ICMP_ECHO_REPLY = {4: 0, 6: 129}

_ETHERTYPES = (b"\x08\x00", b"\x86\xdd")
_PORTS = struct.Struct("!HH")
_ECHO = struct.Struct("!BBHHH")


class Fields(NamedTuple):
    off: int  # IP header within the frame
    version: int
    proto: int
    src: bytes
    dst: bytes
    l4: int  # transport header within the frame
    sport: int  # ICMP echo: the identifier
    dport: int  # ICMP echo: the sequence number
    tcp_flags: int
    icmp_type: int  # -1 unless ICMP/ICMPv6


def ip_offset(linktype: int, frame: bytes) -> int | None:
    """Where the IP header starts in a frame of this link type; None if not IP."""
    if linktype == LINKTYPE_RAW:
        return 0
    if linktype == LINKTYPE_ETHERNET:
        return 14 if frame[12:14] in _ETHERTYPES else None
    if linktype == LINKTYPE_LINUX_SLL:
        return 16 if frame[14:16] in _ETHERTYPES else None
    return None


def parse(frame: bytes, off: int) -> Fields | None:
    n = len(frame)
    if n < off + 20:
        return None
    version = frame[off] >> 4
    if version == 4:
        ihl = (frame[off] & 0x0F) << 2
        if ihl < 20 or struct.unpack_from("!H", frame, off + 6)[0] & 0x1FFF:
            return None  # a later fragment has no transport header
        proto = frame[off + 9]
        src, dst = frame[off + 12:off + 16], frame[off + 16:off + 20]
        l4 = off + ihl
    elif version == 6:
        if n < off + 40:
            return None
        proto = frame[off + 6]
        src, dst = frame[off + 8:off + 24], frame[off + 24:off + 40]
        l4 = off + 40
    else:
        return None
    if proto in (TCP, UDP):
        if n < l4 + (14 if proto == TCP else 8):
            return None
        sport, dport = _PORTS.unpack_from(frame, l4)
        flags = frame[l4 + 13] if proto == TCP else 0
        return Fields(off, version, proto, src, dst, l4, sport, dport, flags, -1)
    if (proto == ICMP and version == 4) or (proto == ICMPV6 and version == 6):
        if n < l4 + 8:
            return None
        itype, _code, _ck, ident, seq = _ECHO.unpack_from(frame, l4)
        return Fields(off, version, proto, src, dst, l4, ident, seq, 0, itype)
    return None


def is_flow_opener(f: Fields) -> bool:
    """A packet that starts a flow a backend opens a host socket for."""
    if f.proto == TCP:
        return f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    if f.proto == UDP:
        return True
    return f.icmp_type == ICMP_ECHO_REQUEST[f.version]


def is_reachable_unicast(addr: bytes) -> bool:
    """An address a backend could open a host-side flow to (not link-local, multicast, ...)."""
    if len(addr) == 4:
        return addr[0] not in (0, 127) and addr[0] < 224 and addr[:2] != b"\xa9\xfe"
    return addr[0] != 0xFF and addr[:2] != b"\xfe\x80" and addr != bytes(15) + b"\x01" and addr != bytes(16)
