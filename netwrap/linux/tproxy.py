"""TPROXY in the sandbox: the socket options and the policy routing, shared by
tunrelay's fast path and the front-end's DNS path.

A locally generated packet never meets a prerouting hook, where TPROXY works.
So nftables marks it on its way out (a route-type output chain), an `ip rule`
sends marked packets to a table whose only route is `local default dev lo`,
and the packet comes back in on lo, where a prerouting rule hands it to a
transparent listener. The listener's accepted sockets (TCP) or the
IP_ORIGDSTADDR of each datagram (UDP) keep the address the command sent to.
Each user takes its own mark bit and table, so both can run at once.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netwrap.linux.rtnetlink import Rtnl

# <linux/in.h>, <linux/in6.h>: Python's socket module has none of them.
IP_TRANSPARENT = 19
IP_RECVORIGDSTADDR = 20  # also the cmsg type of the address (IP_ORIGDSTADDR)
IPV6_TRANSPARENT = 75
IPV6_RECVORIGDSTADDR = 74  # also IPV6_ORIGDSTADDR

LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


def listener_options(family: int, *, origdst: bool = False) -> list[tuple[int, int, int]]:
    """Socket options of a transparent listener (IPv6: v6 only); `origdst` for
    a UDP listener that must learn each datagram's original destination."""
    if family == socket.AF_INET:
        out = [(socket.SOL_IP, IP_TRANSPARENT, 1)]
        return out + [(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)] if origdst else out
    out = [(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1), (socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)]
    return out + [(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)] if origdst else out


def original_destination(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """The (address, port) a datagram was sent to, from recvmsg's ancillary
    data (a struct sockaddr_in or sockaddr_in6); None if it is not there."""
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            port, raw = struct.unpack_from("!2xH4s", data)
            return str(ipaddress.IPv4Address(raw)), port
        if level == socket.IPPROTO_IPV6 and kind == IPV6_RECVORIGDSTADDR and len(data) >= 24:
            port, raw = struct.unpack_from("!2xH4x16s", data)
            return str(ipaddress.IPv6Address(raw)), port
    return None


def route_marked_to_lo(rtnl: Rtnl, *, mark: int, table: int, priority: int,
                       families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6)) -> None:
    """`ip rule add fwmark MARK/MARK lookup TABLE priority P` and `ip route add
    local default dev lo table TABLE`, IPv4 and IPv6 (OSError, NetwrapError)."""
    from netwrap.linux import rtnetlink

    for family in families:
        rtnl.request(lambda s: rtnetlink.add_rule(family, fwmark=mark, fwmask=mark, table=table,
                                                  priority=priority, seq=s),
                     "add the TPROXY routing rule")
        rtnl.request(lambda s: rtnetlink.add_route(family, oif=1, table=table, kind=rtnetlink.RTN_LOCAL, seq=s),
                     "add the TPROXY local route")
