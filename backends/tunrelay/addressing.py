"""The sandbox's addresses under tunrelay, and where each new flow may go.

Layout (the same numbers as slirp4netns, so users, docs and tests meet one
picture):

    tun0      10.0.2.100/24   fd00::100/64    the sandbox's end; default routes
    gateway   10.0.2.2        fd00::2         the host's loopback, only with
                                              --allow-host-loopback
    DNS       10.0.2.3        fd00::3         port 53 (UDP and TCP) goes to the
                                              host's first resolver, loopback
                                              resolvers such as 127.0.0.53 included
    fake peers 10.0.2.128/25  fd00::1:0/112   the TUN NAT path's peer pool (on-link,
                                              so the child routes them to the TUN)

Decisions are per new flow (not per packet): :class:`Destinations` turns
(protocol, destination) into a core Verdict: pass, redirect, or reject.  The
relay must never become a way into the host's loopback: 127.0.0.0/8, ::1,
IPv4-mapped and unspecified destinations are refused (the gateway reaches
host loopback only with --allow-host-loopback). The host's other addresses,
those on its `lo` outside 127.0.0.0/8 included, are reached like any peer's,
as from another machine and as under slirp4netns and pasta: a service bound
only to loopback is not reachable through them, and the policy
(--block-private, --offline) refuses them when asked.
"""

from __future__ import annotations

import ipaddress

from netwrap.linux.hostfiles import host_resolvers

from .nat import ALLOW, REJECT, Verdict
from .packets import ICMP, ICMPV6, TCP, UDP

TUN_NAME = "tun0"
MTU = 65520
# A long device queue: a burst of 64 KiB segments must not overflow the ring
# while the relay's thread is busy (a short queue throttles TCP, seen with
# pasta at MTU 1500); TCP windows bound what is really queued.
TXQUEUELEN = 10000

ADDRESS_V4, PREFIX_V4 = "10.0.2.100", 24
ADDRESS_V6, PREFIX_V6 = "fd00::100", 64
GATEWAY_V4, GATEWAY_V6 = "10.0.2.2", "fd00::2"
DNS_V4, DNS_V6 = "10.0.2.3", "fd00::3"
POOL_V4, POOL_V6 = "10.0.2.128/25", "fd00::1:0/112"
SUBNET_V4, SUBNET_V6 = "10.0.2.0/24", "fd00::/64"

LOOPBACK = {4: "127.0.0.1", 6: "::1"}


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def first_resolver(resolv_conf_text: str) -> str:
    found = host_resolvers(resolv_conf_text)
    return found[0] if found else "127.0.0.1"  # what the C library uses with none


_SUBNET4 = ipaddress.ip_network(SUBNET_V4)
_SUBNET6 = ipaddress.ip_network(SUBNET_V6)
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_COMPAT = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible, :: and ::1 included


class Destinations:
    """Where a new flow of the child goes (see the module docstring).

    ``decide(proto, dst, dport)`` returns None to pass the flow on unchanged,
    or a Verdict (a redirect target or a reject).  ``proto`` is the IP
    protocol number; echo has dport 0.
    """

    def __init__(self, *, resolver: str, allow_host_loopback: bool) -> None:
        r = ipaddress.ip_address(resolver)
        self.resolver = (r.packed, 53)
        self.allow_host_loopback = allow_host_loopback
        self._gw = {packed(GATEWAY_V4): packed(LOOPBACK[4]), packed(GATEWAY_V6): packed(LOOPBACK[6])}
        self._dns = {packed(DNS_V4), packed(DNS_V6)}

    def decide(self, proto: int, dst: bytes, dport: int) -> Verdict | None:
        echo = proto in (ICMP, ICMPV6)
        reset = "rst" if proto == TCP else "port"
        if dst in self._dns:
            if echo:
                return Verdict(target=(self._gw[packed(GATEWAY_V4 if len(dst) == 4 else GATEWAY_V6)], 0))
            if dport == 53 and proto in (TCP, UDP):
                return Verdict(target=self.resolver)
            return Verdict(REJECT, reject=reset)  # nothing else listens there
        loopback = self._gw.get(dst)
        if loopback is not None:
            if echo or self.allow_host_loopback:
                return Verdict(target=(loopback, dport))  # pinging the gateway is harmless
            return Verdict(REJECT, reject="admin")
        ip = ipaddress.ip_address(dst)
        if ip.version == 4:
            if ip in _SUBNET4 or ip.is_loopback or ip.packed[0] == 0:
                return Verdict(REJECT, reject="host" if ip in _SUBNET4 else "admin")
        elif ip in _SUBNET6 or ip in _MAPPED or ip in _COMPAT or ip.is_link_local:
            return Verdict(REJECT, reject="host" if ip in _SUBNET6 else "admin")
        return None

    def policy(self, pkt) -> Verdict:
        """The core's per-new-flow policy hook (RelayCore / TcpNat)."""
        v = self.decide(pkt.proto, pkt.dst, pkt.dport)
        return ALLOW if v is None else v
