"""Where tunrelay sends a new flow; the fast path's ruleset text."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest

from netwrap.backends.tunrelay import addressing as A
from netwrap.backends.tunrelay import tproxy
from netwrap.backends.tunrelay.nat import REJECT

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def dests(**kw) -> A.Destinations:
    kw.setdefault("resolver", "127.0.0.53")
    kw.setdefault("allow_host_loopback", False)
    return A.Destinations(**kw)


def test_dns_address_goes_to_the_hosts_resolver_on_port_53_only() -> None:
    d = dests()
    for dns in (A.DNS_V4, A.DNS_V6):
        assert d.decide(UDP, ip(dns), 53).target == (ip("127.0.0.53"), 53)
        assert d.decide(TCP, ip(dns), 53).target == (ip("127.0.0.53"), 53)
        assert d.decide(TCP, ip(dns), 80) == (REJECT, None, "rst")
        assert d.decide(UDP, ip(dns), 54) == (REJECT, None, "port")


def test_gateway_is_host_loopback_only_when_allowed() -> None:
    closed, opened = dests(), dests(allow_host_loopback=True)
    assert closed.decide(TCP, ip(A.GATEWAY_V4), 8080).action == REJECT
    assert closed.decide(UDP, ip(A.GATEWAY_V6), 8080).action == REJECT
    assert opened.decide(TCP, ip(A.GATEWAY_V4), 8080).target == (ip("127.0.0.1"), 8080)
    assert opened.decide(TCP, ip(A.GATEWAY_V6), 8080).target == (ip("::1"), 8080)
    # echo to the gateway is answered by the host's loopback either way
    assert closed.decide(ICMP, ip(A.GATEWAY_V4), 0).target == (ip("127.0.0.1"), 0)


@pytest.mark.parametrize("addr", ["127.0.0.1", "127.1.2.3", "0.1.2.3", "::1", "::", "::ffff:127.0.0.1",
                                  "::ffff:8.8.8.8", "fe80::1", "10.0.2.77", "10.0.2.200", "fd00::1:5"])
def test_never_into_the_host_or_our_own_subnet(addr: str) -> None:
    for allow in (False, True):
        v = dests(allow_host_loopback=allow).decide(TCP, ip(addr), 80)
        assert v is not None and v.action == REJECT, (addr, allow)


def test_host_addresses_only_with_host_loopback_open() -> None:
    local = {ip("192.0.2.2")}
    closed = dests(is_local=local.__contains__)
    opened = dests(is_local=local.__contains__, allow_host_loopback=True)
    assert closed.decide(TCP, ip("192.0.2.2"), 22).action == REJECT
    assert opened.decide(TCP, ip("192.0.2.2"), 22) is None
    assert closed.decide(TCP, ip("93.184.215.14"), 80) is None


def test_local_address_cache_asks_the_kernel_once_per_address() -> None:
    clock = [0.0]
    cache = A.LocalAddressCache(lambda: clock[0], ttl=10)
    assert cache(ip("127.0.0.1")) is True
    # Whether 192.0.2.123 is local depends on this machine: iproute2 is the oracle.
    assert cache(ip("192.0.2.123")) is _iproute2_says_local("192.0.2.123")
    cache._cache[ip("127.0.0.1")] = (0.0, False)  # a cached answer is used within its lifetime
    assert cache(ip("127.0.0.1")) is False
    clock[0] = 11
    assert cache(ip("127.0.0.1")) is True


def test_resolv_conf_parsing() -> None:
    text = "# x\nsearch a b\nnameserver fe80::1%eth0\nnameserver 127.0.0.53 # stub\nnameserver 2001:db8::53\n"
    assert A.host_resolvers(text) == ["127.0.0.53", "2001:db8::53"]
    assert A.first_resolver("") == "127.0.0.1"


def test_ruleset_text() -> None:
    text = tproxy.render_ruleset("tun0", 4001, 6001)
    assert text.startswith("table inet netwrap_tunrelay {\n")
    assert 'oifname "tun0" meta l4proto tcp tcp flags & (syn | ack) != syn meta mark set meta mark | 0x00400000' in text
    assert "tproxy ip to 127.0.0.1:4001" in text and "tproxy ip6 to [::1]:6001" in text
    assert text.count("tproxy") == 4 and "notrack" in text


def test_ruleset_is_accepted_by_nft() -> None:
    nft = shutil.which("nft")
    if nft is None or shutil.which("unshare") is None:
        pytest.skip("needs nft and unshare")
    done = subprocess.run(["unshare", "-rn", nft, "-c", "-f", "-"], input=tproxy.render_ruleset("lo", 1, 2),
                          capture_output=True, text=True, timeout=20)
    if "unshare failed" in done.stderr:
        pytest.skip("no user namespaces here")
    assert done.returncode == 0, done.stderr


def _iproute2_says_local(address: str) -> bool:
    """Does `ip route get` route `address` through the local table (type local)?"""
    done = subprocess.run(["ip", "-o", "route", "get", address], capture_output=True, text=True, timeout=10)
    return done.returncode == 0 and done.stdout.split()[:1] == ["local"]
