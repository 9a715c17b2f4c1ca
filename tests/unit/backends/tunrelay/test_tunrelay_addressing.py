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


@pytest.mark.parametrize("addr", ["192.0.2.2", "192.0.2.200", "2001:db8:ff::2", "169.254.169.254",
                                  "93.184.215.14"])
def test_host_addresses_pass_like_any_peer(addr: str) -> None:
    # The host's own addresses (192.0.2.2 on an interface, 192.0.2.200 on its
    # lo, the metadata address wherever it lives) are not host loopback:
    # the flow passes unchanged, whether host loopback is open or not.
    for allow in (False, True):
        for proto, port in ((TCP, 80), (UDP, 7)):
            assert dests(allow_host_loopback=allow).decide(proto, ip(addr), port) is None, (addr, allow, proto)


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
