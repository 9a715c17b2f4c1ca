"""Reading the host's own files (resolv.conf, hosts, /proc/net tables).

They describe the machine, not input the user gave, so a missing or
unreadable one means "nothing there" rather than an error: netwrap then
falls back to its defaults, as a resolver library would.
"""

from __future__ import annotations

import ipaddress


def read_host_file(path: str) -> str:
    """The file's text, undecodable bytes replaced; "" if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def local_ipv4(fib_trie: str) -> list[str]:
    """The local IPv4 addresses in /proc/net/fib_trie's text (loopback's included).

    The FIB lists every address a namespace owns, without an ioctl per interface.
    """
    out, last = [], None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            last = text[4:]
        elif last and text.startswith("/32 host LOCAL"):
            out.append(last)
    return out


def ipv6_by_interface(if_inet6: str) -> list[tuple[bytes, str]]:
    """(16-byte address, interface name) for each line of /proc/net/if_inet6's text."""
    out = []
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) >= 6 and len(fields[0]) == 32:
            try:
                out.append((bytes.fromhex(fields[0]), fields[-1]))
            except ValueError:
                continue
    return out


def default_gateways(route: str, ipv6_route: str) -> list[str]:
    """The default routes' gateways in /proc/net/route's and /proc/net/ipv6_route's text.

    /proc/net/route writes IPv4 addresses as hex of the bytes in host order
    (little-endian here); ipv6_route writes them in network order.
    """
    out = []
    for line in route.splitlines()[1:]:  # a header line first
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
            try:
                out.append(str(ipaddress.IPv4Address(bytes.fromhex(fields[2])[::-1])))
            except ValueError:
                continue
    for line in ipv6_route.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[0] == "0" * 32 and fields[1] == "00" and fields[4] != "0" * 32:
            try:
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[4]))))
            except ValueError:
                continue
    return out


def host_resolvers(resolv_conf_text: str) -> list[str]:
    """The nameserver lines of a resolv.conf, in order; scoped ones
    (fe80::1%eth0) are skipped: the scope names a host interface."""
    out = []
    for line in resolv_conf_text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver" and "%" not in words[1]:
            try:
                out.append(str(ipaddress.ip_address(words[1])))
            except ValueError:
                continue
    return out
