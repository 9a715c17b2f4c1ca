"""resolv.conf, hosts and DNS forcing: pure rendering and parsing."""

from __future__ import annotations


import pytest

from netwrap.dns import files as dnsfiles
from netwrap.errors import UsageError



@pytest.mark.parametrize("value, expected", [
    ("198.51.100.53", "198.51.100.53"), ("2001:DB8::53", "2001:db8::53"), ("[2001:db8::1]", "2001:db8::1"),
])
def test_parse_dns(value, expected):
    assert dnsfiles.parse_dns(value) == expected


@pytest.mark.parametrize("value", ["not-an-ip", "", "999.1.1.1", "1.2.3", "example.com", "2001:db8::g"])
def test_parse_dns_rejects(value):
    with pytest.raises(UsageError, match=r"--dns .*not an IPv4 or IPv6 address"):
        dnsfiles.parse_dns(value)


@pytest.mark.parametrize("spec, expected", [
    ("a.test:203.0.113.7", ("a.test", "203.0.113.7")),
    ("b.test:2001:db8::7", ("b.test", "2001:db8::7")),
    ("c.test:[2001:db8::8]", ("c.test", "2001:db8::8")),
    ("host_1:10.0.0.1", ("host_1", "10.0.0.1")),
])
def test_parse_add_host(spec, expected):
    assert dnsfiles.parse_add_host(spec) == expected


@pytest.mark.parametrize("spec, why", [
    ("nocolon", "expected NAME:IP"),
    ("x:999.1.1.1", "'999.1.1.1' is not an IPv4 or IPv6 address"),
    (":1.2.3.4", "is not a valid host name"),
    ("bad..name:1.2.3.4", "is not a valid host name"),
    ("-lead.test:1.2.3.4", "is not a valid host name"),
    ("a.test:", "'' is not an IPv4 or IPv6 address"),
])
def test_parse_add_host_rejects(spec, why):
    with pytest.raises(UsageError) as info:
        dnsfiles.parse_add_host(spec)
    assert repr(spec) in str(info.value) and why in str(info.value)


def test_host_settings_keep_search_and_options():
    text = "# comment\nnameserver 127.0.0.53\nsearch a.example b.example\noptions edns0 trust-ad\n" \
           "domain last.example ; trailing\n"
    assert dnsfiles.host_resolv_settings(text) == (["last.example"], ["edns0", "trust-ad"])


def test_render_resolv_conf():
    text = dnsfiles.render_resolv_conf(["198.51.100.53", "2001:db8:53::53"], search=["corp.example"],
                                       options=["edns0"], origin="forced resolver (--dns)")
    assert text == ("# written by netwrap for this sandbox: forced resolver (--dns)\n"
                    "nameserver 198.51.100.53\nnameserver 2001:db8:53::53\n"
                    "search corp.example\noptions edns0\n")


def test_render_hosts_appends_after_the_base():
    base = "127.0.0.1\tlocalhost\n10.1.1.1\ta.test"
    assert dnsfiles.render_hosts(base, []) == base
    assert dnsfiles.render_hosts(base, [("a.test", "203.0.113.7"), ("b.test", "2001:db8::7")]) == (
        "127.0.0.1\tlocalhost\n10.1.1.1\ta.test\n# added by netwrap (--add-host)\n"
        "203.0.113.7\ta.test\n2001:db8::7\tb.test\n")
