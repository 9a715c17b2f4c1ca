"""Which DNS flows of the command go to netwrap's DNS proxy, and where the proxy sends them on.

Pure: the nftables ruleset that hands every DNS flow of the command (UDP and
TCP port 53, IPv4 and IPv6, to any address but the sandbox's own) to the
proxy's transparent listeners, and the choice of the server that answers a
query the command sent to a given address. The I/O is
netwrap.dns.proxy_service.

    output (route hook, before tunrelay's fast path)   port-53 flows to a
                          remote address get MARK; policy routing (fwmark
                          MARK -> table ROUTE_TABLE: local default dev lo,
                          netwrap.linux.tproxy) sends them to lo instead
    prerouting            marked packets coming in on lo go to the proxy's
                          listeners by TPROXY, their destination kept

The destination is never rewritten, so the policy's output chain (priority
filter, after this one) judges the address the command asked for: a DNS flow
the policy refuses is refused before the proxy sees it. And the command's
answers come from the address it asked, as without netwrap.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import attrs

TABLE_NAME = "netwrap_dns"
MARK = 0x00200000  # one bit of its own: tunrelay's fast path uses 0x00400000
ROUTE_TABLE = 0x4E44  # "ND"
RULE_PRIORITY = 99  # before the main table (32766); tunrelay's rule is 100
# Before tunrelay's route chain (priority mangle): once this chain has sent a
# DNS packet to lo, that one no longer sees it leave by the TUN.
OUTPUT_PRIORITY = "mangle - 10"
DNS_PORT = 53


@attrs.frozen(kw_only=True)
class Listeners:
    """The loopback ports of the proxy's transparent listeners in the sandbox."""

    udp4: int
    tcp4: int
    udp6: int | None = None  # None: the sandbox has no IPv6
    tcp6: int | None = None


def render_interception(ports: Listeners, mark: int = MARK) -> str:
    """``nft -f`` input handing every DNS flow of the command to the proxy."""
    m = f"0x{mark:08x}"
    steer = []
    for family, proto, addr, port in (("ipv4", "udp", "127.0.0.1", ports.udp4), ("ipv4", "tcp", "127.0.0.1", ports.tcp4),
                                      ("ipv6", "udp", "[::1]", ports.udp6), ("ipv6", "tcp", "[::1]", ports.tcp6)):
        if port is None:
            continue
        ip = "ip" if family == "ipv4" else "ip6"
        steer.append(f'\t\tiifname "lo" meta mark & {m} == {m} meta nfproto {family} {proto} dport {DNS_PORT} '
                     f"tproxy {ip} to {addr}:{port} accept")
    return "\n".join([
        f"table inet {TABLE_NAME} {{",
        "\tchain output {",
        f"\t\ttype route hook output priority {OUTPUT_PRIORITY}; policy accept;",
        f"\t\tmeta l4proto {{ tcp, udp }} th dport {DNS_PORT} fib daddr type != local "
        f"meta mark set meta mark | {m}",
        "\t}",
        "\tchain prerouting {",
        "\t\ttype filter hook prerouting priority mangle - 10; policy accept;",
        *steer,
        "\t}",
        "}",
        "",
    ])


def choose_upstream(original: str, *, forced: Sequence[str], backend_dns: Sequence[str],
                    host_resolvers: Sequence[str]) -> str:
    """The server that answers a query the command sent to `original`.

    With a forced resolver (--dns) it answers every query, whatever address
    and family the command used (one of the query's family if there is one).
    A query to the backend's own DNS address goes to the host's first
    resolver, loopback ones included, as the backend would forward it (the
    C library's default, 127.0.0.1, if the host names none). Any other
    query goes where the command sent it.
    """
    version = ipaddress.ip_address(original).version
    if forced:
        same = [r for r in forced if ipaddress.ip_address(r).version == version]
        return (same or list(forced))[0]
    if _normal(original) in {_normal(a) for a in backend_dns}:
        return host_resolvers[0] if host_resolvers else "127.0.0.1"
    return original


def _normal(address: str) -> str:
    return str(ipaddress.ip_address(address.split("%")[0]))
