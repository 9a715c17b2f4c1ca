"""netwrap.linux.tproxy: reading a datagram's original destination from recvmsg's ancillary data."""

from __future__ import annotations

import socket

from netwrap.linux import tproxy
from privileges import needs_loopback

# struct sockaddr_in: family AF_INET (2, host order), port 53, 8.8.8.8, 8 bytes of zero.
SOCKADDR_IN = b"\x02\x00\x00\x35\x08\x08\x08\x08" + b"\0" * 8
# struct sockaddr_in6: family 10, port 53, flowinfo 0, 2001:db8::53, scope 0.
SOCKADDR_IN6 = (b"\x0a\x00\x00\x35\x00\x00\x00\x00" + bytes.fromhex("20010db8000000000000000000000053")
                + b"\0\0\0\0")


def test_ipv4_and_ipv6_original_destinations():
    # The numbers of <linux/in.h> and <linux/in6.h>, written down.
    assert (tproxy.IP_RECVORIGDSTADDR, tproxy.IPV6_RECVORIGDSTADDR) == (20, 74)
    assert tproxy.original_destination([(socket.SOL_IP, 20, SOCKADDR_IN)]) == ("8.8.8.8", 53)
    assert tproxy.original_destination([(socket.IPPROTO_IPV6, 74, SOCKADDR_IN6)]) == ("2001:db8::53", 53)


def test_other_ancillary_data_is_not_an_address():
    assert tproxy.original_destination([]) is None
    assert tproxy.original_destination([(socket.SOL_IP, 8, SOCKADDR_IN)]) is None  # IP_PKTINFO
    assert tproxy.original_destination([(socket.SOL_IP, 20, SOCKADDR_IN[:6])]) is None


@needs_loopback
def test_a_real_transparent_udp_listener_asks_for_the_address():
    """The options are the kernel's: a loopback datagram carries its destination
    (IP_TRANSPARENT needs CAP_NET_ADMIN; without it only the second option is checked)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for level, name, value in tproxy.listener_options(socket.AF_INET, origdst=True):
            try:
                listener.setsockopt(level, name, value)
            except PermissionError:
                assert name == tproxy.IP_TRANSPARENT
        listener.bind(("127.0.0.1", 0))
        sender.sendto(b"q", listener.getsockname())
        listener.settimeout(5)
        _, ancdata, _, _ = listener.recvmsg(16, socket.CMSG_SPACE(16))
        assert tproxy.original_destination(ancdata) == listener.getsockname()
