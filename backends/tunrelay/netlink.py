"""A small rtnetlink client: configure the TUN, routes and policy rules.

Why not pyroute2: it costs ~300 ms of start-up (field notes), and tunrelay
needs six message kinds.  Why not `ip`: iproute2 may be absent on the
"nothing but pip install" machine tunrelay is the fallback for.

The socket is an AF_NETLINK/NETLINK_ROUTE socket that the sandbox's init
created (SandboxCalls.socket), so it talks to the sandbox's netns.  Rtnetlink
checks CAP_NET_ADMIN both for the socket's opener (init, root there) and for
the sender (netwrap's parent): rootless, the parent owns the sandbox's user
namespace and so holds every capability in it; rootful it is root.

Builders are pure functions returning bytes (tested byte for byte); Rtnl
sends them one at a time and waits for the kernel's ACK, raising OSError
with the kernel's errno on failure.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h, linux/fib_rules.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400

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

_NLMSGHDR = struct.Struct("=IHHII")
_RTATTR = struct.Struct("=HH")
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_FIB_RULE_HDR = struct.Struct("=BBBBBBBBI")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, value: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    n = _RTATTR.size + len(value)
    return _RTATTR.pack(n, kind) + value + b"\0" * (_align(n) - n)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def message(kind: int, flags: int, body: bytes, seq: int = 0) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def _family(addr: bytes) -> int:
    return socket.AF_INET if len(addr) == 4 else socket.AF_INET6


def get_link(name: str, seq: int = 0) -> bytes:
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr(IFLA_IFNAME, name.encode() + b"\0")
    return message(RTM_GETLINK, NLM_F_REQUEST, body, seq)


def set_link(index: int, *, up: bool = True, mtu: int | None = None, txqlen: int | None = None,
             seq: int = 0) -> bytes:
    """`ip link set dev INDEX up mtu M txqueuelen Q`."""
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP)
    if mtu is not None:
        body += attr_u32(IFLA_MTU, mtu)
    if txqlen is not None:
        body += attr_u32(IFLA_TXQLEN, txqlen)
    return message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, body, seq)


def add_address(index: int, addr: bytes, prefixlen: int, *, nodad: bool = True, seq: int = 0) -> bytes:
    """`ip addr add ADDR/PREFIXLEN dev INDEX [nodad]`.  IPv6 addresses skip
    duplicate address detection: the link is ours alone, and a tentative
    address could not be bound (the listeners) or used for a while."""
    flags = IFA_F_NODAD if nodad and len(addr) == 16 else 0
    body = _IFADDRMSG.pack(_family(addr), prefixlen, flags & 0xFF, RT_SCOPE_UNIVERSE, index)
    body += attr(IFA_LOCAL, addr) + attr(IFA_ADDRESS, addr) + attr_u32(IFA_FLAGS, flags)
    return message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, seq)


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
    return message(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, seq)


def add_rule(family: int, *, fwmark: int, fwmask: int, table: int, priority: int, seq: int = 0) -> bytes:
    """`ip rule add fwmark MARK/MASK lookup TABLE priority P`."""
    body = _FIB_RULE_HDR.pack(family, 0, 0, 0, table if table < 256 else 0, 0, 0, FR_ACT_TO_TBL, 0)
    body += attr_u32(FRA_PRIORITY, priority) + attr_u32(FRA_FWMARK, fwmark)
    body += attr_u32(FRA_FWMASK, fwmask) + attr_u32(FRA_TABLE, table)
    return message(RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, body, seq)


def parse_messages(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split a datagram into (type, seq, payload) triples; stops at a bad length."""
    out = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            break
        out.append((kind, seq, data[off + _NLMSGHDR.size:off + length]))
        off += _align(length)
    return out


def error_code(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR payload (0 for an ACK)."""
    return -_I32.unpack_from(payload)[0] if len(payload) >= 4 else 0


def link_index(payload: bytes) -> int:
    """The interface index of an RTM_NEWLINK payload."""
    return _IFINFOMSG.unpack_from(payload)[2]


class Rtnl:
    """Requests over one rtnetlink socket, each answered before the next."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = itertools.count(1)

    def _exchange(self, build, what: str) -> tuple[int, bytes]:
        seq = next(self._seq)
        self.sock.send(build(seq))
        while True:
            for kind, got_seq, payload in parse_messages(self.sock.recv(65536)):
                if got_seq != seq:
                    continue  # a late answer to an earlier request
                if kind == NLMSG_ERROR:
                    err = error_code(payload)
                    if err:
                        raise OSError(err, f"{what}: {os.strerror(err)}")
                return kind, payload

    def request(self, build, what: str) -> None:
        """Send build(seq) (a request with NLM_F_ACK) and wait for its ACK."""
        self._exchange(build, what)

    def link_index(self, name: str) -> int:
        kind, payload = self._exchange(lambda seq: get_link(name, seq), f"find interface {name}")
        if kind != RTM_NEWLINK:
            raise OSError(0, f"find interface {name}: unexpected answer {kind}")
        return link_index(payload)
