"""The host's network interfaces and their addresses, for --iface.

`--iface IFACE` is checked before anything starts: the interface must exist,
and a backend that binds to an address (slirp4netns) needs IFACE's own
addresses. One RTM_GETADDR dump answers both questions.

The request builder and the parser are pure functions of bytes (tested
against pyroute2); `lookup()` is the thin layer that sends the dump over a
NETLINK_ROUTE socket of netwrap's own network namespace (the host's).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable

import attrs

from netwrap.linux.netlink import (NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, RECV_SIZE, NetlinkFormatError,
                                   error_code, iter_attributes, iter_messages, message)

# linux/rtnetlink.h, linux/netlink.h, linux/if_addr.h
RTM_NEWADDR = 20
RTM_GETADDR = 22
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_SITE = 200

_IFADDRMSG = struct.Struct("=BBBBI")  # struct ifaddrmsg: family, prefixlen, flags, scope, index


@attrs.frozen(kw_only=True)
class Address:
    """One address of an interface, as RTM_NEWADDR reports it."""

    index: int
    family: int
    address: str
    prefixlen: int
    scope: int
    flags: int

    @property
    def routable(self) -> bool:
        """Usable as a source beyond the link: global or site scope, not tentative or failed DAD.

        Link-local addresses (fe80::/10, 169.254/16 on scope link) cannot be the
        source of a connection to the internet, so they do not count.
        """
        return self.scope in (RT_SCOPE_UNIVERSE, RT_SCOPE_SITE) and not self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)


def dump_addresses(seq: int = 1) -> bytes:
    """`ip addr show`: an RTM_GETADDR dump of every interface's addresses, both families."""
    return message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), seq=seq)


def parse_address(payload: bytes) -> Address | None:
    """The address of one RTM_NEWADDR payload (None for a family other than IPv4/IPv6).

    IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
    point-to-point link and the same as IFA_LOCAL elsewhere (IPv6 sends only it).
    """
    if len(payload) < _IFADDRMSG.size:
        raise NetlinkFormatError(f"RTM_NEWADDR payload of {len(payload)} bytes, shorter than struct ifaddrmsg")
    family, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(payload)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    size = 4 if family == socket.AF_INET else 16
    found: dict[int, bytes] = {}
    for atype, data in iter_attributes(payload, _IFADDRMSG.size):
        if atype in (IFA_ADDRESS, IFA_LOCAL):
            if len(data) != size:
                raise NetlinkFormatError(f"address attribute of {len(data)} bytes for family {family}")
            found[atype] = data
    raw = found.get(IFA_LOCAL, found.get(IFA_ADDRESS))
    if raw is None:
        raise NetlinkFormatError("RTM_NEWADDR without an address")
    return Address(index=index, family=family, address=socket.inet_ntop(family, raw), prefixlen=prefixlen,
                   scope=scope, flags=flags)


def collect(datagrams: Iterable[bytes], seq: int) -> tuple[list[Address], bool]:
    """The addresses in a dump's answer so far, and whether NLMSG_DONE was seen.

    Raises OSError with the kernel's errno if it refused the dump, and
    EBADMSG for a malformed answer.
    """
    found: list[Address] = []
    try:
        for datagram in datagrams:
            for msg in iter_messages(datagram):
                if msg.seq != seq:
                    continue
                if msg.type == NLMSG_DONE:
                    return found, True
                if msg.type == NLMSG_ERROR:
                    code = error_code(msg)
                    if code:
                        raise OSError(code, f"list addresses: {errno.errorcode.get(code, code)}")
                elif msg.type == RTM_NEWADDR:
                    addr = parse_address(msg.payload)
                    if addr is not None:
                        found.append(addr)
    except NetlinkFormatError as exc:
        raise OSError(errno.EBADMSG, f"list addresses: malformed netlink answer: {exc}") from None
    return found, False


@attrs.frozen(kw_only=True)
class Interface:
    """A host interface and the addresses it can send from, per family."""

    name: str
    index: int
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()


def interface_from(name: str, index: int, addresses: Iterable[Address]) -> Interface:
    """`name`'s routable addresses, in the kernel's order (its primary first)."""
    mine = [a for a in addresses if a.index == index and a.routable]
    return Interface(name=name, index=index,
                     ipv4=tuple(a.address for a in mine if a.family == socket.AF_INET),
                     ipv6=tuple(a.address for a in mine if a.family == socket.AF_INET6))


def lookup(name: str) -> Interface | None:
    """The host interface `name` and its addresses; None if there is no such interface."""
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        return None
    seq = 1
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5.0)
        sock.send(dump_addresses(seq))
        addresses: list[Address] = []
        done = False
        while not done:
            part, done = collect([sock.recv(RECV_SIZE)], seq)
            addresses += part
    return interface_from(name, index, addresses)
