"""The fast path's nftables ruleset and policy routing, as text and numbers.

    output (route hook)   TCP that would leave by the TUN, except a
                          connection's first SYN, gets MARK: policy routing
                          (fwmark MARK -> table TABLE: local default dev lo)
                          sends it to lo instead
    prerouting (raw)      SYNs the relay writes back into the TUN are not
                          tracked: the SYN's way out already made the
                          connection's conntrack entry (with its --dns DNAT),
                          and a second entry for the same flow would clash
    prerouting (mangle)   TPROXY: SYNs from the TUN (released by the relay)
                          and MARKed packets looping back on lo go to the
                          transparent listeners (127.0.0.1 and ::1), keeping
                          their destination as the accepted socket's address

Verified on Linux 6.x in rootless network namespaces (field notes).
"""

from __future__ import annotations

TABLE_NAME = "netwrap_tunrelay"
MARK = 0x00400000  # one bit: other marks (policy) keep working
ROUTE_TABLE = 0x4E57  # "NW"
RULE_PRIORITY = 100  # before the main table (32766)


def render_ruleset(tun: str, port4: int, port6: int, mark: int = MARK) -> str:
    m = f"0x{mark:08x}"
    return "\n".join([
        f"table inet {TABLE_NAME} {{",
        "\tchain output {",
        "\t\ttype route hook output priority mangle; policy accept;",
        f'\t\toifname "{tun}" meta l4proto tcp tcp flags & (syn | ack) != syn meta mark set meta mark | {m}',
        "\t}",
        "\tchain prerouting_raw {",
        "\t\ttype filter hook prerouting priority raw; policy accept;",
        f'\t\tiifname "{tun}" meta l4proto tcp tcp flags & (syn | ack) == syn notrack',
        "\t}",
        "\tchain prerouting {",
        "\t\ttype filter hook prerouting priority mangle; policy accept;",
        f'\t\tiifname "{tun}" meta nfproto ipv4 meta l4proto tcp tcp flags & (syn | ack) == syn '
        f"tproxy ip to 127.0.0.1:{port4} meta mark set meta mark | {m} accept",
        f'\t\tiifname "{tun}" meta nfproto ipv6 meta l4proto tcp tcp flags & (syn | ack) == syn '
        f"tproxy ip6 to [::1]:{port6} meta mark set meta mark | {m} accept",
        f'\t\tiifname "lo" meta mark & {m} == {m} meta nfproto ipv4 meta l4proto tcp '
        f"tproxy ip to 127.0.0.1:{port4} accept",
        f'\t\tiifname "lo" meta mark & {m} == {m} meta nfproto ipv6 meta l4proto tcp '
        f"tproxy ip6 to [::1]:{port6} accept",
        "\t}",
        "}",
        "",
    ])
