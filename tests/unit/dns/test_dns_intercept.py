"""netwrap.dns.intercept: the ruleset that hands DNS to the proxy, and where each query goes."""

from __future__ import annotations

import os
import subprocess

import pytest

from netwrap.dns import intercept
from netwrap.dns.intercept import Listeners, choose_upstream

PORTS = Listeners(udp4=40001, udp6=40002, tcp4=40003, tcp6=40004)


def test_ruleset_marks_remote_dns_and_steers_it_to_the_four_listeners():
    assert intercept.render_interception(PORTS).splitlines() == [
        "table inet netwrap_dns {",
        "\tchain output {",
        "\t\ttype route hook output priority mangle - 10; policy accept;",
        "\t\tmeta l4proto { tcp, udp } th dport 53 fib daddr type != local meta mark set meta mark | 0x00200000",
        "\t}",
        "\tchain prerouting {",
        "\t\ttype filter hook prerouting priority mangle - 10; policy accept;",
        '\t\tiifname "lo" meta mark & 0x00200000 == 0x00200000 meta nfproto ipv4 udp dport 53 '
        "tproxy ip to 127.0.0.1:40001 accept",
        '\t\tiifname "lo" meta mark & 0x00200000 == 0x00200000 meta nfproto ipv4 tcp dport 53 '
        "tproxy ip to 127.0.0.1:40003 accept",
        '\t\tiifname "lo" meta mark & 0x00200000 == 0x00200000 meta nfproto ipv6 udp dport 53 '
        "tproxy ip6 to [::1]:40002 accept",
        '\t\tiifname "lo" meta mark & 0x00200000 == 0x00200000 meta nfproto ipv6 tcp dport 53 '
        "tproxy ip6 to [::1]:40004 accept",
        "\t}",
        "}",
    ]


def test_mark_is_not_tunrelays():
    from netwrap.backends.tunrelay import tproxy as tunrelay_tproxy

    assert intercept.MARK & tunrelay_tproxy.MARK == 0
    assert intercept.ROUTE_TABLE != tunrelay_tproxy.ROUTE_TABLE
    assert intercept.RULE_PRIORITY != tunrelay_tproxy.RULE_PRIORITY


def test_a_forced_resolver_answers_every_address_in_either_family():
    kw = dict(backend_dns=["169.254.0.53"], host_resolvers=["127.0.0.53"])
    assert choose_upstream("8.8.8.8", forced=["2001:db8::53"], **kw) == "2001:db8::53"
    assert choose_upstream("2001:4860::8888", forced=["198.51.100.53"], **kw) == "198.51.100.53"
    assert choose_upstream("169.254.0.53", forced=["198.51.100.53"], **kw) == "198.51.100.53"
    both = ["2001:db8::53", "198.51.100.53"]
    assert choose_upstream("8.8.8.8", forced=both, **kw) == "198.51.100.53"
    assert choose_upstream("2001:4860::8888", forced=both, **kw) == "2001:db8::53"


def test_the_backends_dns_address_means_the_hosts_first_resolver():
    kw = dict(forced=[], backend_dns=["10.0.2.3", "fd00::3"])
    assert choose_upstream("10.0.2.3", host_resolvers=["127.0.0.53", "192.0.2.9"], **kw) == "127.0.0.53"
    assert choose_upstream("fd00:0::3", host_resolvers=["192.0.2.9"], **kw) == "192.0.2.9"
    assert choose_upstream("10.0.2.3", host_resolvers=[], **kw) == "127.0.0.1"


def test_any_other_address_is_asked_itself():
    assert choose_upstream("1.1.1.1", forced=[], backend_dns=["10.0.2.3"], host_resolvers=["127.0.0.53"]) == "1.1.1.1"


@pytest.mark.skipif(os.geteuid() != 0, reason="nft -c needs CAP_NET_ADMIN (CI runs as root)")
def test_ruleset_is_valid_nft(tmp_path):
    path = tmp_path / "intercept.nft"
    path.write_text(intercept.render_interception(PORTS))
    done = subprocess.run(["unshare", "-n", "nft", "-c", "-f", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_without_ipv6_only_ipv4_is_steered():
    text = intercept.render_interception(Listeners(udp4=40001, tcp4=40003))
    assert "tproxy ip to 127.0.0.1:40001" in text and "tproxy ip to 127.0.0.1:40003" in text
    assert "ip6" not in text and "nfproto ipv6" not in text
