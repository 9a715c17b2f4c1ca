"""rtnetlink requests for tunrelay: configure the TUN, addresses, routes and policy rules.

Built on netwrap.linux.netlink (framing, attributes, the ack loop). Why not
pyroute2: its import costs 106-120 ms of start-up (field notes), and tunrelay
needs six message kinds. Why not `ip`: iproute2 may be absent on the
"nothing but pip install" machine tunrelay is the fallback for.

The socket is an AF_NETLINK/NETLINK_ROUTE socket that the sandbox's init
created (SandboxCalls.socket), so it talks to the sandbox's netns.  Rtnetlink
checks CAP_NET_ADMIN both for the socket's opener (init, root there) and for
the sender (netwrap's parent): rootless, the parent owns the sandbox's user
namespace and so holds every capability in it; rootful it is root.

Builders are pure functions returning bytes (tested byte for byte and against
pyroute2); Rtnl sends them one at a time and waits for the kernel's ACK,
raising OSError with the kernel's errno on failure.
"""

from __future__ import annotations

import errno
import itertools
import socket
import struct
from collections.abc import Callable

from netwrap.linux.netlink import (NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, Message,
                                   NetlinkFormatError, attr, attr_u32, message, request)

# linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/fib_rules.h
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
RTM_NEWRULE = 32

IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_TXQLEN = 13
IFF_UP = 0x1

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
IFA_F_NODAD = 0x02

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15
RTN_UNICAST = 1
RTN_LOCAL = 2
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254
RTPROT_BOOT = 3
RTPROT_STATIC = 4
RT_TABLE_MAIN = 254
RTNH_F_ONLINK = 4

FRA_PRIORITY = 6
FRA_FWMARK = 10
FRA_TABLE = 15
FRA_FWMASK = 16
FR_ACT_TO_TBL = 1

_IFINFOMSG = struct.Struct("=BxHiII")  # struct ifinfomsg
_IFADDRMSG = struct.Struct("=BBBBI")  # struct ifaddrmsg
_RTMSG = struct.Struct("=BBBBBBBBI")  # struct rtmsg
_FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")  # struct fib_rule_hdr


def _family(addr: bytes) -> int:
    return socket.AF_INET if len(addr) == 4 else socket.AF_INET6


def get_link(name: str, seq: int = 0) -> bytes:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, name.encode() + b"\0")
    # With NLM_F_ACK the kernel acks after its RTM_NEWLINK answer: the one ack loop serves gets too.
    return message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, body, seq=seq)


def set_link(index: int, *, up: bool = True, mtu: int | None = None, txqlen: int | None = None,
             seq: int = 0) -> bytes:
    """`ip link set dev INDEX up mtu M txqueuelen Q`."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP)
    if mtu is not None:
        body += attr_u32(IFLA_MTU, mtu)
    if txqlen is not None:
        body += attr_u32(IFLA_TXQLEN, txqlen)
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body, seq=seq)


def add_address(index: int, addr: bytes, prefixlen: int, *, nodad: bool = True, seq: int = 0) -> bytes:
    """`ip addr add ADDR/PREFIXLEN dev INDEX [nodad]`.  IPv6 addresses skip
    duplicate address detection: the link is ours alone, and a tentative
    address could not be bound (the listeners) or used for a while."""
    flags = IFA_F_NODAD if nodad and len(addr) == 16 else 0
    body = _IFADDRMSG.pack(_family(addr), prefixlen, flags & 0xFF, RT_SCOPE_UNIVERSE, index)
    body += attr(IFA_LOCAL, addr) + attr(IFA_ADDRESS, addr) + attr_u32(IFA_FLAGS, flags)
    return message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, seq=seq)


def add_route(family: int, *, dst: bytes | None = None, dst_len: int = 0, gateway: bytes | None = None,
              oif: int | None = None, table: int = RT_TABLE_MAIN, kind: int = RTN_UNICAST,
              onlink: bool = False, seq: int = 0) -> bytes:
    """`ip route add [local] DST/LEN [via GW [onlink]] dev OIF table T`."""
    scope = RT_SCOPE_HOST if kind == RTN_LOCAL else RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
    body = _RTMSG.pack(family, dst_len, 0, 0, table if table < 256 else 0, RTPROT_BOOT, scope, kind,
                       RTNH_F_ONLINK if onlink else 0)
    if dst is not None:
        body += attr(RTA_DST, dst)
    if gateway is not None:
        body += attr(RTA_GATEWAY, gateway)
    if oif is not None:
        body += attr_u32(RTA_OIF, oif)
    body += attr_u32(RTA_TABLE, table)
    return message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, seq=seq)


def add_rule(family: int, *, fwmark: int, fwmask: int, table: int, priority: int, seq: int = 0) -> bytes:
    """`ip rule add fwmark MARK/MASK lookup TABLE priority P`."""
    body = _FIB_RULE_HDR.pack(family, 0, 0, 0, table if table < 256 else 0, 0, 0, FR_ACT_TO_TBL, 0)
    body += attr_u32(FRA_PRIORITY, priority) + attr_u32(FRA_FWMARK, fwmark)
    body += attr_u32(FRA_FWMASK, fwmask) + attr_u32(FRA_TABLE, table)
    return message(RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, seq=seq)


def link_index(payload: bytes) -> int:
    """The interface index of an RTM_NEWLINK payload."""
    if len(payload) < _IFINFOMSG.size:
        raise NetlinkFormatError(f"RTM_NEWLINK payload of {len(payload)} bytes, shorter than struct ifinfomsg")
    return _IFINFOMSG.unpack_from(payload)[2]


class Rtnl:
    """Requests over one rtnetlink socket, each answered before the next."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = itertools.count(1)

    def _exchange(self, build: Callable[[int], bytes], what: str) -> list[Message]:
        return request(self.sock, build(next(self._seq)), what)

    def request(self, build: Callable[[int], bytes], what: str) -> None:
        """Send build(seq) (a request with NLM_F_ACK) and wait for its ACK."""
        self._exchange(build, what)

    def link_index(self, name: str) -> int:
        what = f"find interface {name}"
        replies = self._exchange(lambda seq: get_link(name, seq), what)
        links = [m for m in replies if m.type == RTM_NEWLINK]
        if len(links) != 1:
            raise OSError(errno.EBADMSG, f"{what}: unexpected answer {[m.type for m in replies]}")
        try:
            return link_index(links[0].payload)
        except NetlinkFormatError as exc:
            raise OSError(errno.EBADMSG, f"{what}: {exc}") from None
