"""Names and addresses of the test world, in one place.

Documentation ranges only (RFC 5737 / RFC 3849) for the world's own links, so
nothing here could be mistaken for a real network; the "internet" namespace
answers every address anyway, so public-looking ones (WORLD_V4, WORLD_V6) are
safe to use inside the world.
"""

from __future__ import annotations

# The web server most tests talk to (what www.example.test resolves to).
WORLD_V4 = "93.184.215.14"
WORLD_V6 = "2606:4700::1111"
# The world's authoritative DNS (any address answers DNS; these are the named ones).
DNS_V4 = "198.51.100.53"
DNS_V6 = "2001:db8:53::53"
HTTP_PORT = 80
HTTP_ALT_PORT = 8080
HTTPS_PORT = 443
DNS_PORT = 53
ECHO_PORT = 7

# The veth between the host namespace and the internet namespace.
HOST_IF = "nwveth0"
INET_IF = "nwveth1"
HOST_V4 = "192.0.2.2"
INET_V4 = "192.0.2.1"
LINK_V4_NET = "192.0.2.0/24"
HOST_V6 = "2001:db8:ff::2"
INET_V6 = "2001:db8:ff::1"
LINK_V6_NET = "2001:db8:ff::/64"
# The host's second uplink to the internet (for --iface): its default routes
# have a higher metric, so only traffic bound to it leaves this way. The
# benchmarking range (RFC 2544) and another documentation prefix.
HOST_IF2 = "nwveth2"
INET_IF2 = "nwveth3"
HOST2_V4 = "198.18.0.2"
INET2_V4 = "198.18.0.1"
LINK2_V4_NET = "198.18.0.0/24"
HOST2_V6 = "2001:db8:fe::2"
INET2_V6 = "2001:db8:fe::1"
LINK2_V6_NET = "2001:db8:fe::/64"
# The host routes by source address, as a multi-homed host does: whatever
# leaves from the second uplink's addresses takes that uplink (this table).
UPLINK2_TABLE = 102
# Above the first uplink's defaults (IPv4 metric 0, IPv6 1024).
UPLINK2_METRIC_V4 = 200
UPLINK2_METRIC_V6 = 2048
# The world's uplinks as (host side, internet side).
UPLINKS = ((HOST_IF, INET_IF), (HOST_IF2, INET_IF2))

# Addresses of the host on its own lo, outside 127.0.0.0/8 and ::1 (as a
# service address or an anycast one would be): the host's, not loopback.
HOST_LO_V4 = "192.0.2.200"
HOST_LO_V6 = "2001:db8:ff::200"

# The host's loopback stub resolver, like systemd-resolved's.
HOST_RESOLVER = "127.0.0.53"

# The world's DNS zone: name -> record type -> values.  Names not listed get
# NXDOMAIN; a listed name without the asked type gets an empty NOERROR.
ZONE: dict[str, dict[str, list[str]]] = {
    "example.test": {"A": [WORLD_V4], "AAAA": [WORLD_V6]},
    "www.example.test": {"A": [WORLD_V4], "AAAA": [WORLD_V6]},
    "example.com": {"A": [WORLD_V4], "AAAA": [WORLD_V6]},
    "www.example.com": {"A": [WORLD_V4], "AAAA": [WORLD_V6]},
    "metadata.example.test": {"A": ["169.254.169.254"]},
    "other.example.test": {"A": ["203.0.113.80"]},
    "dns.example.test": {"A": [DNS_V4], "AAAA": [DNS_V6]},
}

# Names in the HTTPS server's certificate (besides WORLD_V4 and WORLD_V6).
CERT_DNS_NAMES = ["www.example.test", "example.test", "www.example.com", "example.com"]
