"""The egress view: the host-side flows a backend opens for the command, synthesised.

pasta and slirp4netns terminate the sandbox's flows and open their own
sockets on the host; what those sockets send cannot be read without
capturing the host's interfaces (that is wire-egress, which needs
CAP_NET_RAW). So this view is built from the child view, packet by packet,
and says so in its interface description:

- kept: IP packets of TCP, UDP and ICMP echo between the sandbox and an
  address the backend reaches for it; left out: ARP, neighbour discovery,
  multicast, link-local chatter with the backend itself;
- addresses are the host's: the sandbox's address becomes the source address
  the host's routing picks for that destination (asked from the kernel with
  an unsent UDP connect in netwrap's own namespace), and the backend's DNS
  forwarding address becomes the host resolver it forwards to;
- ports, ICMP identifiers, sequence numbers, segmentation and timing are the
  child's: the backend's own ephemeral ports and segment sizes are not
  observable from here;
- checksums are updated for the new addresses (RFC 1624), so they are right
  exactly when the child's were (outgoing packets with checksum offload
  carry only the pseudo-header sum, and that is adjusted as such).

A backend that knows its real host-side flows (tunrelay, whose sockets are
netwrap's own) can replace this with the real thing by providing its own
`Addressing`; the rest of the capture does not change.
"""

from __future__ import annotations

import socket
import struct

from netwrap.capture import fields as packet_fields
from netwrap.capture.fields import ICMP, UDP, Fields

_U16 = struct.Struct("!H")


class Addressing:
    """How the backend's host side addresses a flow: resolver mapping and source addresses."""

    def __init__(self, forwarders: dict[bytes, bytes] | None = None) -> None:
        # sandbox-side DNS address of the backend -> host resolver it forwards to
        self.forwarders = dict(forwarders or {})
        self._sources: dict[bytes, bytes | None] = {}

    def host_peer(self, addr: bytes) -> bytes | None:
        """The host-side address for a peer the sandbox talks to; None if the backend answers it itself."""
        mapped = self.forwarders.get(addr)
        if mapped is not None:
            return mapped
        return addr if packet_fields.is_reachable_unicast(addr) else None

    def host_source(self, peer: bytes) -> bytes | None:
        """The address this host sends from to reach `peer` (its routing decides)."""
        if peer not in self._sources:
            if len(self._sources) > 4096:
                self._sources.clear()
            self._sources[peer] = _route_source(peer)
        return self._sources[peer]


def _route_source(peer: bytes) -> bytes | None:
    family = socket.AF_INET if len(peer) == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((socket.inet_ntop(family, peer), 9))  # UDP connect: nothing is sent
            return socket.inet_pton(family, s.getsockname()[0])
    except OSError:
        return None


def host_resolver_forwarders(sandbox_dns: tuple[str, ...], resolv_conf: str = "/etc/resolv.conf") -> dict[bytes, bytes]:
    """Map the backend's DNS addresses to the host's first resolver of the same family."""
    try:
        with open(resolv_conf, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return {}
    servers = [w[1] for w in (line.split() for line in text.splitlines()) if len(w) >= 2 and w[0] == "nameserver"]
    out: dict[bytes, bytes] = {}
    for dns in sandbox_dns:
        family = socket.AF_INET6 if ":" in dns else socket.AF_INET
        for server in servers:
            try:
                out[socket.inet_pton(family, dns)] = socket.inet_pton(family, server.split("%")[0])
                break
            except OSError:
                continue  # the other family
    return out


class EgressSynthesiser:
    """Child-view frames in, host-side IP packets out."""

    def __init__(self, addressing: Addressing) -> None:
        self.addressing = addressing

    def synthesise(self, frame: bytes, f: Fields, outgoing: bool, csum_partial: bool) -> tuple[bytes, Fields] | None:
        """The host-side IP packet for a child frame (`f`: its parsed fields), or None."""
        if f.proto in (ICMP, packet_fields.ICMPV6) and f.icmp_type not in (
                packet_fields.ICMP_ECHO_REQUEST[f.version], packet_fields.ICMP_ECHO_REPLY[f.version]):
            return None  # errors and neighbour discovery: the backend's own business
        a = self.addressing
        if outgoing:
            peer = a.host_peer(f.dst)
            me = a.host_source(peer) if peer is not None else None
            src, dst = me, peer
        else:
            peer = a.host_peer(f.src)
            me = a.host_source(peer) if peer is not None else None
            src, dst = peer, me
        if src is None or dst is None or len(src) != len(f.src) or len(dst) != len(f.dst):
            return None
        off = f.off
        packet = bytearray(frame[off:])
        f = f._replace(off=0, l4=f.l4 - off)  # offsets in `packet` from here on
        _rewrite_addresses(packet, f, src, dst, csum_partial)
        return bytes(packet), f._replace(src=src, dst=dst)


def _rewrite_addresses(p: bytearray, f: Fields, src: bytes, dst: bytes, csum_partial: bool) -> None:
    delta = (int.from_bytes(src + dst, "big") - int.from_bytes(f.src + f.dst, "big")) % 0xFFFF
    if f.version == 4:
        p[12:20] = src + dst
        _update(p, 10, delta, partial=False)
    else:
        p[8:40] = src + dst
    l4 = f.l4
    if f.proto == packet_fields.TCP:
        _update(p, l4 + 16, delta, partial=csum_partial)
    elif f.proto == UDP:
        if not (f.version == 4 and _U16.unpack_from(p, l4 + 6)[0] == 0):  # 0: "no checksum" in IPv4
            _update(p, l4 + 6, delta, partial=csum_partial, udp=True)
    elif f.proto == packet_fields.ICMPV6:  # ICMPv4 has no pseudo-header
        _update(p, l4 + 2, delta, partial=csum_partial)


def _update(p: bytearray, at: int, delta: int, *, partial: bool, udp: bool = False) -> None:
    """RFC 1624 eqn. 3 for a full checksum; a plain add for a partial one (pseudo-header sum only)."""
    if at + 2 > len(p):
        return
    ck = _U16.unpack_from(p, at)[0]
    if partial:
        ck = (ck + delta) % 0xFFFF or 0xFFFF
    else:
        r = (0xFFFF - ck + delta) % 0xFFFF
        ck = 0xFFFF - r if r else (0xFFFF if udp else 0)
    _U16.pack_into(p, at, ck)
