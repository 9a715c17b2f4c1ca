"""The capture's BPF programs, attached by the kernel to real packet sockets.

Each test makes a fresh network namespace (root; CI runs as root), opens an
AF_PACKET socket with the program attached before it receives anything, plus
an unfiltered "witness" socket, sends real traffic, and compares what each
saw with the packets written down here. The witness shows the traffic was
there; the filtered socket shows what the program let through.

The traffic: UDP datagrams with non-local addresses sent from sockets bound
with IP_TRANSPARENT (as TPROXY'd flows are), addresses made local by
`ip route add local ... dev lo` (as tunrelay's fast path does), a veth pair
for Ethernet, a TUN device for bare IP, and ARP frames sent on a packet socket.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import socket
import struct

import pytest

from netwrap.capture import bpf

import freshnet

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="needs root (fresh network namespaces, IP_TRANSPARENT) and ip")

ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
IP_TRANSPARENT = 19  # linux/in.h
IPV6_TRANSPARENT = 75  # linux/in6.h
# sockaddr_ll pkttype (linux/if_packet.h)
HOST, BROADCAST, MULTICAST, OUTGOING = 0, 1, 2, 4
PORT = 9  # discard: nothing listens, the datagram only has to cross the interface
TAG = b"netwrap-bpf-probe"


# -- the namespace, its sockets and its traffic ------------------------------------------------

def _packet_socket(program: bytes | None, ifname: str | None) -> socket.socket:
    """On ifname: made with protocol 0 (receives nothing), filtered, then bound, so nothing unfiltered
    gets in. On every interface (None): made receiving (Python cannot bind to ifindex 0); the
    caller sends nothing before it is filtered."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0 if ifname else socket.htons(ETH_P_ALL))
    if program is not None:
        bpf.attach(s, program)
    if ifname is not None:
        s.bind((ifname, ETH_P_ALL))
    return s


def _drain(s: socket.socket, idle: float = 0.3) -> list[tuple[str, int, bytes]]:
    """(interface, pkttype, frame) for each packet queued, until `idle` seconds pass without one."""
    got = []
    while select.select([s], [], [], idle)[0]:
        frame, addr = s.recvfrom(65536)
        got.append((addr[0], addr[2], frame))
    return got


def _udp(family: int, src: str, dst: str) -> None:
    """One tagged datagram from src to dst, whichever addresses those are (IP_TRANSPARENT)."""
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        if family == socket.AF_INET:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        s.bind((src, 4000))
        s.sendto(TAG, (dst, PORT))


def _arp(ifname: str) -> None:
    """An ARP request for 192.0.2.9 from 192.0.2.2, broadcast on ifname."""
    mac = bytes.fromhex("020000000001")
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, socket.inet_aton("192.0.2.2"), bytes(6),
                      socket.inet_aton("192.0.2.9"))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        s.bind((ifname, 0))
        s.send(b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP) + arp)


def _what(frame: bytes, link: int) -> tuple | None:
    """("udp", src, dst) for a probe datagram, ("arp",) for ARP, None for anything else.

    link: the bytes before the IP header (14 for Ethernet and lo, 0 for a TUN).
    """
    if link and frame[12:14] == struct.pack("!H", ETH_P_ARP):
        return ("arp",)
    ip = frame[link:]
    if ip[:1] and ip[0] >> 4 == 4 and ip[9] == 17:
        header = (ip[0] & 0x0F) * 4
        if ip[header + 8:] == TAG:
            return ("udp", socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]))
    if ip[:1] and ip[0] >> 4 == 6 and ip[6] == 17 and ip[48:] == TAG:
        return ("udp", socket.inet_ntop(socket.AF_INET6, ip[8:24]), socket.inet_ntop(socket.AF_INET6, ip[24:40]))
    return None


def _seen(packets: list[tuple[str, int, bytes]], link: int) -> list[tuple]:
    """The probes and ARP frames among packets, as (interface, pkttype, what), sorted."""
    return sorted((ifname, pkttype, what) for ifname, pkttype, frame in packets
                  if (what := _what(frame, link)) is not None)


def _capture(netns: int, program: bytes, ifname: str | None, send, link: int = 14) -> tuple[list, list]:
    """(filtered, witness): what each socket saw of the probes and ARP frames send() made."""
    def run() -> tuple[list, list]:
        with _packet_socket(program, ifname) as filtered, _packet_socket(None, ifname) as witness:
            send()
            return _seen(_drain(filtered), link), _seen(_drain(witness, idle=0.05), link)

    return freshnet.run_in(netns, run)


@pytest.fixture
def netns():
    fd = freshnet.new_netns()
    # No IPv6 link-local addresses: no DAD, router or MLD chatter on the links.
    freshnet.sh(fd, "sysctl -qw net.ipv6.conf.default.addr_gen_mode=1 net.ipv6.conf.all.addr_gen_mode=1\n"
                    "ip link set lo up")
    yield fd
    os.close(fd)


V4, V6 = socket.AF_INET, socket.AF_INET6


# -- loopback_redirected(): the sandbox's lo -------------------------------------------------------

LO_SETUP = """
ip addr add 10.0.2.100/32 dev lo
ip -6 addr add fd00::100/128 dev lo nodad
ip route add local 93.184.215.0/24 dev lo
ip -6 route add local 2606:4700::/32 dev lo
"""


@pytest.mark.parametrize("family, src, dst, kept", [
    (V4, "10.0.2.100", "93.184.215.14", True),  # redirected: the real peer stays in the packet
    (V4, "93.184.215.14", "10.0.2.100", True),
    (V4, "127.0.0.1", "127.0.0.53", False),  # loopback chatter
    (V4, "10.0.2.100", "10.0.2.100", False),  # the sandbox's address to itself
    (V6, "fd00::100", "2606:4700::1111", True),
    (V6, "::1", "::1", False),
], ids=["out", "in", "loopback", "self", "v6", "v6-loopback"])
def test_loopback_filter_keeps_only_redirected_arrivals(netns, family, src, dst, kept):
    freshnet.sh(netns, LO_SETUP)
    filtered, witness = _capture(netns, bpf.loopback_redirected(), "lo", lambda: _udp(family, src, dst))
    # lo shows each datagram twice: leaving, then arriving.
    assert witness == [("lo", HOST, ("udp", src, dst)), ("lo", OUTGOING, ("udp", src, dst))]
    assert filtered == ([("lo", HOST, ("udp", src, dst))] if kept else [])


def test_loopback_filter_leaves_out_the_leaving_copy(netns):
    freshnet.sh(netns, LO_SETUP)

    def both_ways() -> None:
        _udp(V4, "10.0.2.100", "93.184.215.14")
        _udp(V4, "93.184.215.14", "10.0.2.100")

    filtered, witness = _capture(netns, bpf.loopback_redirected(), "lo", both_ways)
    assert [p for p in witness if p[1] == OUTGOING] == [
        ("lo", OUTGOING, ("udp", "10.0.2.100", "93.184.215.14")),
        ("lo", OUTGOING, ("udp", "93.184.215.14", "10.0.2.100"))]
    assert filtered == [("lo", HOST, ("udp", "10.0.2.100", "93.184.215.14")),
                        ("lo", HOST, ("udp", "93.184.215.14", "10.0.2.100"))]


def test_loopback_filter_leaves_out_arp(netns):
    filtered, witness = _capture(netns, bpf.loopback_redirected(), "lo", lambda: _arp("lo"))
    # ff:ff:ff:ff:ff:ff is not lo's broadcast address (all zeros): it arrives as multicast.
    assert witness == [("lo", MULTICAST, ("arp",)), ("lo", OUTGOING, ("arp",))]
    assert filtered == []


# -- ip_except_loopback_echo(lo_ifindex): every interface of the host ----------------------------------

VETH_SETUP = """
ip link add veth0 address 02:00:00:00:00:01 type veth peer name veth1 address 02:00:00:00:00:02
ip link set veth0 up
ip link set veth1 up
ip route add default via 192.0.2.1 dev veth0 onlink
ip neigh add 192.0.2.1 lladdr 02:00:00:00:00:02 dev veth0 nud permanent
ip -6 route add default via fd00::2 dev veth0 onlink
ip -6 neigh add fd00::2 lladdr 02:00:00:00:00:02 dev veth0 nud permanent
"""
LO_IFINDEX = 1  # the kernel numbers lo 1 in every network namespace


def test_host_filter_keeps_ip_everywhere_and_only_lo_arrivals(netns):
    freshnet.sh(netns, VETH_SETUP)

    def send() -> None:
        _udp(V4, "192.0.2.2", "93.184.215.14")  # leaves by veth0, arrives on veth1
        _udp(V6, "2001:db8::2", "2606:4700::1111")
        _udp(V4, "127.0.0.1", "127.0.0.1")  # lo: leaves, then arrives
        _arp("veth0")

    filtered, witness = _capture(netns, bpf.ip_except_loopback_echo(LO_IFINDEX), None, send)
    assert witness == sorted([
        ("veth0", OUTGOING, ("udp", "192.0.2.2", "93.184.215.14")),
        ("veth1", HOST, ("udp", "192.0.2.2", "93.184.215.14")),
        ("veth0", OUTGOING, ("udp", "2001:db8::2", "2606:4700::1111")),
        ("veth1", HOST, ("udp", "2001:db8::2", "2606:4700::1111")),
        ("lo", OUTGOING, ("udp", "127.0.0.1", "127.0.0.1")),
        ("lo", HOST, ("udp", "127.0.0.1", "127.0.0.1")),
        ("veth0", OUTGOING, ("arp",)),
        ("veth1", BROADCAST, ("arp",)),
    ])
    assert filtered == sorted([
        ("veth0", OUTGOING, ("udp", "192.0.2.2", "93.184.215.14")),
        ("veth1", HOST, ("udp", "192.0.2.2", "93.184.215.14")),
        ("veth0", OUTGOING, ("udp", "2001:db8::2", "2606:4700::1111")),
        ("veth1", HOST, ("udp", "2001:db8::2", "2606:4700::1111")),
        ("lo", HOST, ("udp", "127.0.0.1", "127.0.0.1")),
    ])


# -- except_networks(): the backend's interface, without the relay's own plumbing -------------------

NETWORKS = ["10.0.2.128/25", "fd00::1:0/112"]
PROBES = [  # (family, source, destination, kept)
    (V4, "10.0.2.100", "93.184.215.14", True),
    (V4, "10.0.2.129", "10.0.2.100", False),  # from the network
    (V4, "10.0.2.100", "10.0.2.255", False),  # to it
    (V4, "10.0.2.100", "10.0.2.127", True),  # just below it
    (V6, "fd00::100", "2606:4700::1111", True),
    (V6, "fd00::1:5", "fd00::100", False),
    (V6, "fd00::100", "fd00::1:ffff", False),
    (V6, "fd00::100", "fd00::2:1", True),  # just past it
]

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def _send_probes() -> None:
    for family, src, dst, _ in PROBES:
        _udp(family, src, dst)


def test_internal_networks_filter_on_ethernet(netns):
    freshnet.sh(netns, VETH_SETUP)

    def send() -> None:
        _send_probes()
        _arp("veth0")  # not IP: kept

    filtered, witness = _capture(netns, bpf.except_networks(NETWORKS, ethernet=True), "veth0", send)
    assert witness == sorted([("veth0", OUTGOING, ("udp", src, dst)) for _, src, dst, _ in PROBES]
                             + [("veth0", OUTGOING, ("arp",))])
    assert filtered == sorted([("veth0", OUTGOING, ("udp", "10.0.2.100", "93.184.215.14")),
                               ("veth0", OUTGOING, ("udp", "10.0.2.100", "10.0.2.127")),
                               ("veth0", OUTGOING, ("udp", "fd00::100", "2606:4700::1111")),
                               ("veth0", OUTGOING, ("udp", "fd00::100", "fd00::2:1")),
                               ("veth0", OUTGOING, ("arp",))])


def test_internal_networks_filter_on_bare_ip(netns):
    def open_tun() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", b"tun0", IFF_TUN | IFF_NO_PI))
        return fd

    tun = freshnet.run_in(netns, open_tun)  # held open: a TUN without its reader has no carrier
    try:
        freshnet.sh(netns, "ip link set tun0 up\nip route add default dev tun0\nip -6 route add default dev tun0")

        def send() -> None:
            _send_probes()
            # An arrival too: what the relay writes into the TUN, from the network.
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(TAG), 1, 0, 64, 17, 0,
                                 socket.inet_aton("10.0.2.130"), socket.inet_aton("10.0.2.100"))
            os.write(tun, header + struct.pack("!HHHH", 4000, PORT, 8 + len(TAG), 0) + TAG)

        filtered, witness = _capture(netns, bpf.except_networks(NETWORKS, ethernet=False), "tun0", send, link=0)
    finally:
        os.close(tun)
    assert witness == sorted([("tun0", OUTGOING, ("udp", src, dst)) for _, src, dst, _ in PROBES]
                             + [("tun0", HOST, ("udp", "10.0.2.130", "10.0.2.100"))])
    assert filtered == sorted([("tun0", OUTGOING, ("udp", "10.0.2.100", "93.184.215.14")),
                               ("tun0", OUTGOING, ("udp", "10.0.2.100", "10.0.2.127")),
                               ("tun0", OUTGOING, ("udp", "fd00::100", "2606:4700::1111")),
                               ("tun0", OUTGOING, ("udp", "fd00::100", "fd00::2:1"))])


# -- the assembler --------------------------------------------------------------------------------

def test_bpf_programs_assemble_to_whole_instructions():
    for program in (bpf.loopback_redirected(), bpf.ip_except_loopback_echo(1),
                    bpf.except_networks(NETWORKS, ethernet=True)):
        assert len(program) % 8 == 0
        insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
        assert insns[-1][0] == 0x06  # ends with a return
        for pc, (code, jt, jf, _k) in enumerate(insns):
            if code & 0x07 == 0x05:  # a jump lands inside the program
                assert pc + 1 + max(jt, jf) < len(insns)


def test_bpf_label_out_of_range_is_refused():
    with pytest.raises(ValueError):
        bpf.assemble([("back",), (0x06, 0), (0x15, 1, "back", None)])
