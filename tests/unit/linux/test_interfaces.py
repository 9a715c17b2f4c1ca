"""netwrap.linux.interfaces: the RTM_GETADDR dump, byte for byte, and the addresses it yields.

Oracles: bytes written out by hand from linux/netlink.h and if_addr.h
(little-endian host), messages encoded by pyroute2's ifaddrmsg, and, for the
live lookup, pyroute2's own IPRoute reading the same kernel.
"""

from __future__ import annotations

import socket
import sys

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from netwrap.linux import interfaces, netlink

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="expected bytes are little-endian")


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def newaddr(family: int, address: str, *, index: int, prefixlen: int, scope: int = 0, flags: int = 0,
            seq: int = 1, local: bool = True) -> bytes:
    msg = ifaddrmsg()
    msg["header"].update(type=20, flags=2, sequence_number=seq, pid=0)
    msg.update(family=family, prefixlen=prefixlen, flags=flags, scope=scope, index=index)
    attrs = [("IFA_ADDRESS", address)] + ([("IFA_LOCAL", address)] if local else []) + [("IFA_LABEL", "x")]
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


DONE_1 = h("14000000 0300 0200 01000000 00000000 00000000")


def test_dump_request_by_hand() -> None:
    # nlmsghdr: len 24, RTM_GETADDR 22, NLM_F_REQUEST|NLM_F_DUMP 0x301, seq 4; ifaddrmsg: AF_UNSPEC, all zero
    assert interfaces.dump_addresses(4) == h("18000000 1600 0103 04000000 00000000  00 00 00 00 00000000")


def test_parse_ipv4_address_from_pyroute2() -> None:
    got = interfaces.parse_address(next(netlink.iter_messages(
        newaddr(socket.AF_INET, "198.18.0.2", index=5, prefixlen=24))).payload)
    assert got == interfaces.Address(index=5, family=socket.AF_INET, address="198.18.0.2", prefixlen=24,
                                     scope=0, flags=0)
    assert got.routable


def test_parse_ipv6_address_without_ifa_local() -> None:
    data = newaddr(socket.AF_INET6, "2001:db8:fe::2", index=7, prefixlen=64, local=False)
    got = interfaces.parse_address(next(netlink.iter_messages(data)).payload)
    assert (got.family, got.address, got.index, got.prefixlen) == (socket.AF_INET6, "2001:db8:fe::2", 7, 64)


def test_point_to_point_takes_the_local_address() -> None:
    msg = ifaddrmsg()
    msg["header"].update(type=20, flags=2, sequence_number=1, pid=0)
    msg.update(family=socket.AF_INET, prefixlen=32, flags=0, scope=0, index=3)
    msg["attrs"] = [("IFA_ADDRESS", "203.0.113.9"), ("IFA_LOCAL", "198.51.100.1")]  # peer, then ours
    msg.encode()
    got = interfaces.parse_address(next(netlink.iter_messages(bytes(msg.data))).payload)
    assert got.address == "198.51.100.1"


@pytest.mark.parametrize("scope, flags, routable", [
    (0, 0, True),  # global
    (200, 0, True),  # site
    (253, 0, False),  # link (fe80::)
    (254, 0, False),  # host (127.0.0.1)
    (0, 0x40, False),  # tentative
    (0, 0x08, False),  # DAD failed
])
def test_which_addresses_can_be_a_source(scope: int, flags: int, routable: bool) -> None:
    addr = interfaces.Address(index=1, family=socket.AF_INET6, address="2001:db8::1", prefixlen=64, scope=scope,
                              flags=flags)
    assert addr.routable is routable


def test_collect_stops_at_done_and_skips_other_requests() -> None:
    first = newaddr(socket.AF_INET, "192.0.2.2", index=2, prefixlen=24)
    other = newaddr(socket.AF_INET, "203.0.113.1", index=2, prefixlen=24, seq=9)  # an earlier request's
    second = newaddr(socket.AF_INET6, "fe80::1", index=2, prefixlen=64, scope=253)
    found, done = interfaces.collect([first + other, second], 1)
    assert (done, [a.address for a in found]) == (False, ["192.0.2.2", "fe80::1"])
    found, done = interfaces.collect([DONE_1], 1)
    assert (found, done) == ([], True)


def test_collect_reports_the_kernels_refusal() -> None:
    # struct nlmsgerr: -13 (EACCES), then the request's header
    error = h("24000000 0200 0000 01000000 00000000  f3ffffff  18000000 1600 0103 01000000 00000000")
    with pytest.raises(OSError) as info:
        interfaces.collect([error], 1)
    assert info.value.errno == 13


def test_collect_refuses_a_truncated_address() -> None:
    bad = netlink.message(20, 2, h("02 18 00 00 05000000") + netlink.attr(2, b"\xc6\x12"), seq=1)
    with pytest.raises(OSError) as info:
        interfaces.collect([bad], 1)
    assert info.value.errno == 74  # EBADMSG


def test_interface_keeps_only_its_own_routable_addresses() -> None:
    addrs = [
        interfaces.Address(index=4, family=socket.AF_INET, address="198.18.0.2", prefixlen=24, scope=0, flags=0),
        interfaces.Address(index=4, family=socket.AF_INET6, address="fe80::2", prefixlen=64, scope=253, flags=0),
        interfaces.Address(index=4, family=socket.AF_INET6, address="2001:db8:fe::2", prefixlen=64, scope=0,
                           flags=0),
        interfaces.Address(index=3, family=socket.AF_INET, address="192.0.2.2", prefixlen=24, scope=0, flags=0),
    ]
    assert interfaces.interface_from("up2", 4, addrs) == interfaces.Interface(
        name="up2", index=4, ipv4=("198.18.0.2",), ipv6=("2001:db8:fe::2",))


def test_unknown_interface_is_none() -> None:
    assert interfaces.lookup("nw-no-such-if0") is None


def test_live_lookup_agrees_with_pyroute2() -> None:
    with IPRoute() as ipr:
        links = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}
        expected = {name: ([], []) for name in links}
        for a in ipr.get_addr():
            if a["scope"] in (0, 200) and not a["flags"] & 0x48:
                name = next(n for n, i in links.items() if i == a["index"])
                expected[name][0 if a["family"] == socket.AF_INET else 1].append(
                    a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"))
    for name, index in links.items():
        got = interfaces.lookup(name)
        assert got is not None and got.index == index
        assert (list(got.ipv4), list(got.ipv6)) == expected[name], name
