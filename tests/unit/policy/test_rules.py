"""Unit tests for netwrap.policy.model: the --allow/--deny grammar, presets, decisions."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netwrap.errors import UsageError
from netwrap.policy.model import (
    METADATA_NETWORKS,
    PRIVATE_NETWORKS,
    Policy,
    PortRange,
    Rule,
    build_policy,
    parse_rule,
)

net = ipaddress.ip_network


def ports(*pairs):
    return tuple(PortRange(first=a, last=b) for a, b in pairs)


# --- Every grammar form ---------------------------------------------------

VALID = [
    # spec, proto, network, hostname, ports
    ("*", "tcp", None, None, None),
    ("*:*", "tcp", None, None, None),
    (":443", "tcp", None, None, ports((443, 443))),
    ("*:443", "tcp", None, None, ports((443, 443))),
    ("tcp://*", "tcp", None, None, None),
    ("tcp://:443", "tcp", None, None, ports((443, 443))),
    ("udp://:53", "udp", None, None, ports((53, 53))),
    ("icmp://*", "icmp", None, None, None),
    ("TCP://1.2.3.4", "tcp", net("1.2.3.4/32"), None, None),
    ("93.184.215.14", "tcp", net("93.184.215.14/32"), None, None),
    ("93.184.215.14:80", "tcp", net("93.184.215.14/32"), None, ports((80, 80))),
    ("udp://198.51.100.53:53", "udp", net("198.51.100.53/32"), None, ports((53, 53))),
    ("10.0.0.0/8", "tcp", net("10.0.0.0/8"), None, None),
    ("10.0.0.0/8:22", "tcp", net("10.0.0.0/8"), None, ports((22, 22))),
    ("0.0.0.0/0:25", "tcp", net("0.0.0.0/0"), None, ports((25, 25))),
    ("1.2.3.4:80,443", "tcp", net("1.2.3.4/32"), None, ports((80, 80), (443, 443))),
    ("1.2.3.4:8000-8080", "tcp", net("1.2.3.4/32"), None, ports((8000, 8080))),
    ("1.2.3.4:1-65535", "tcp", net("1.2.3.4/32"), None, ports((1, 65535))),
    ("1.2.3.4:443,80-90,85", "tcp", net("1.2.3.4/32"), None, ports((80, 90), (443, 443))),
    ("1.2.3.4:80,81,82", "tcp", net("1.2.3.4/32"), None, ports((80, 82))),
    ("1.2.3.4:*", "tcp", net("1.2.3.4/32"), None, None),
    ("2001:db8::1", "tcp", net("2001:db8::1/128"), None, None),
    ("2001:db8::/32", "tcp", net("2001:db8::/32"), None, None),
    ("::1", "tcp", net("::1/128"), None, None),
    ("::", "tcp", net("::/128"), None, None),
    ("[2001:db8::1]", "tcp", net("2001:db8::1/128"), None, None),
    ("[2001:db8::1]:443", "tcp", net("2001:db8::1/128"), None, ports((443, 443))),
    ("[2001:db8::/32]:443", "tcp", net("2001:db8::/32"), None, ports((443, 443))),
    ("udp://[2001:db8::53]:53", "udp", net("2001:db8::53/128"), None, ports((53, 53))),
    ("icmp://[2001:db8::/48]", "icmp", net("2001:db8::/48"), None, None),
    ("icmp://192.0.2.0/24", "icmp", net("192.0.2.0/24"), None, None),
    ("::ffff:192.0.2.1", "tcp", net("192.0.2.1/32"), None, None),
    ("[::ffff:192.0.2.0/120]:80", "tcp", net("192.0.2.0/24"), None, ports((80, 80))),
    ("www.example.test", "tcp", None, "www.example.test", None),
    ("www.example.test:443", "tcp", None, "www.example.test", ports((443, 443))),
    ("WWW.Example.TEST.:443", "tcp", None, "www.example.test", ports((443, 443))),
    ("udp://ns1.example.test:53", "udp", None, "ns1.example.test", ports((53, 53))),
    ("icmp://host-1.example.test", "icmp", None, "host-1.example.test", None),
    ("localhost", "tcp", None, "localhost", None),
    ("xn--bcher-kva.example", "tcp", None, "xn--bcher-kva.example", None),
    ("1.2.3.4a", "tcp", None, "1.2.3.4a", None),
    ("a" * 63 + ".test", "tcp", None, "a" * 63 + ".test", None),
]


@pytest.mark.parametrize("spec, proto, network, hostname, port_ranges", VALID)
def test_valid_allow_specs(spec, proto, network, hostname, port_ranges):
    rule = parse_rule(spec, action="allow")
    assert rule == Rule(
        action="allow",
        proto=proto,
        network=network,
        hostname=hostname,
        ports=port_ranges,
        spec=spec,
    )


@pytest.mark.parametrize(
    "spec", ["2001:db8::/32", "icmp://*", "10.0.0.0/8:22", "[::1]:1-1024", "udp://:53"]
)
def test_valid_deny_specs(spec):
    assert parse_rule(spec, action="deny").action == "deny"


def test_ipv6_with_trailing_number_is_an_address_not_a_port():
    # Documented ambiguity: without brackets, the last group is address.
    rule = parse_rule("2001:db8::1:443", action="allow")
    assert rule.network == net("2001:db8::1:443/128") and rule.ports is None


def test_rules_are_frozen():
    rule = parse_rule("1.2.3.4", action="allow")
    with pytest.raises(AttributeError):
        rule.proto = "udp"  # type: ignore[misc]


def test_bad_action_is_a_programming_error():
    with pytest.raises(ValueError):
        parse_rule("1.2.3.4", action="permit")  # type: ignore[arg-type]


# --- Malformed specs: exit 2, the spec quoted, a specific reason ----------

MALFORMED = [
    ("", "empty rule"),
    ("http://1.2.3.4", "unknown scheme 'http'"),
    ("sctp://1.2.3.4:80", "unknown scheme 'sctp'"),
    ("://1.2.3.4", "missing scheme"),
    ("tcp:/1.2.3.4", "malformed scheme"),
    ("tcp://udp://1.2.3.4", "more than one '://'"),
    ("tcp://", "missing target"),
    ("udp:53", "looks like a scheme without '//'"),
    ("1.2.3.4:0", "port 0 is out of range"),
    ("1.2.3.4:70000", "port 70000 is out of range"),
    ("1.2.3.4:999999999999999999999", "out of range"),
    ("1.2.3.4:-1", "incomplete port range '-1'"),
    ("1.2.3.4:80-", "incomplete port range '80-'"),
    ("1.2.3.4:90-80", "port range '90-80' is reversed"),
    ("1.2.3.4:1-2-3", "invalid port '2-3'"),
    ("1.2.3.4:http", "invalid port 'http'"),
    ("1.2.3.4:", "empty port list"),
    (":", "empty port list"),
    ("1.2.3.4:80,,443", "empty item in port list"),
    ("1.2.3.4:80,", "empty item in port list"),
    ("*:*,80", "'*' cannot be combined with other ports"),
    ("1.2.3.4:80,*", "'*' cannot be combined with other ports"),
    ("1.2.3.4:8*", "'*' cannot be combined with other ports"),
    ("icmp://1.2.3.4:80", "icmp rules take no port"),
    ("icmp://:80", "icmp rules take no port"),
    ("10.0.0.0/33", "prefix length /33 is out of range for IPv4"),
    ("2001:db8::/129", "prefix length /129 is out of range for IPv6"),
    ("10.0.0.0/", "missing prefix length"),
    ("10.0.0.0/x", "bad prefix length 'x'"),
    ("10.0.0.0/8/8", "more than one '/'"),
    ("/24", "missing address before '/'"),
    ("10.0.0.1/8", "host bits set in '10.0.0.1/8' (did you mean '10.0.0.0/8'?)"),
    ("example.test/24", "'example.test' before '/' is not an IP address"),
    ("256.1.1.1", "invalid IPv4 address '256.1.1.1'"),
    ("1.2.3", "invalid IPv4 address '1.2.3'"),
    ("01.2.3.4", "invalid IPv4 address '01.2.3.4'"),
    ("2001:db8:::1", "invalid IPv6 address"),
    ("2001:db8::/32:443", "put an IPv6 network in brackets"),
    ("::1:80,443", "must be in brackets, e.g. [::1]:80,443"),
    ("fe80::1%eth0", "zone indexes"),
    ("[2001:db8::1:443", "unclosed '['"),
    ("2001:db8::1]:443", "']' without a matching '['"),
    ("x[::1]", "'[' must start the target"),
    ("[]:80", "empty brackets"),
    ("[1.2.3.4]:80", "brackets are only for IPv6"),
    ("[example.test]:80", "is not an IPv6 address"),
    ("[::1]443", "unexpected '443' after ']'"),
    ("*.example.test", "wildcard hostnames are not supported"),
    ("**", "'*' must stand alone"),
    ("ex_ample.test", "invalid character '_'"),
    ("-bad.example.test", "starts or ends with '-'"),
    ("bad-.example.test", "starts or ends with '-'"),
    ("a..example.test", "empty label"),
    (".", "empty hostname"),
    ("a" * 64 + ".test", "longer than 63 characters"),
    (".".join(["a" * 60] * 5), "at most 253"),
    ("1.2.3.4 ", "contains whitespace"),
    ("1.2.3.4\n", "contains whitespace"),
    ("1.2.3.4\x00", "control character"),
    ("bücher.example", "non-ASCII hostname; write it in its IDNA form ('xn--bcher-kva.example')"),
    ("x" * 2000, "too long"),
    ("host.example.test:80:90", "invalid IPv6 address"),
]


@pytest.mark.parametrize("spec, reason", MALFORMED)
def test_malformed_allow_specs(spec, reason):
    with pytest.raises(UsageError) as info:
        parse_rule(spec, action="allow")
    message = str(info.value)
    assert info.value.exit_status == 2
    assert "\n" not in message
    shown = repr(spec if len(spec) <= 200 else spec[:200])
    assert message.startswith(f"invalid --allow spec {shown}")
    assert reason in message, message


def test_hostname_in_deny():
    with pytest.raises(UsageError) as info:
        parse_rule("www.example.test:443", action="deny")
    message = str(info.value)
    assert message.startswith("invalid --deny spec 'www.example.test:443': ")
    assert "only --allow takes hostnames" in message


def test_spec_with_quote_stays_one_quoted_line():
    with pytest.raises(UsageError) as info:
        parse_rule("it's", action="allow")
    assert str(info.value).startswith('invalid --allow spec "it\'s": ')


def test_non_string_spec():
    with pytest.raises(UsageError, match="expected a string"):
        parse_rule(443, action="allow")  # type: ignore[arg-type]


# --- Property tests: any string gives a Rule or a UsageError --------------

SPEC_ALPHABET = st.sampled_from(list("tcpudimTx:/[]*.,-0123456789abcdef%_ ") + ["://", "::"])


@settings(max_examples=500)
@given(st.text())
def test_any_text_gives_rule_or_usage_error(spec):
    for action in ("allow", "deny"):
        try:
            rule = parse_rule(spec, action=action)
        except UsageError as e:
            assert "\n" not in str(e)
        else:
            assert isinstance(rule, Rule) and rule.spec == spec


@settings(max_examples=1500)
@given(st.lists(SPEC_ALPHABET, max_size=24).map("".join))
def test_spec_shaped_text_gives_rule_or_usage_error(spec):
    try:
        rule = parse_rule(spec, action="allow")
    except UsageError as e:
        assert str(e).startswith("invalid --allow spec ")
    else:
        # Whatever parsed must be internally consistent.
        assert (rule.network is None) or (rule.hostname is None)
        assert rule.proto != "icmp" or rule.ports is None
        if rule.ports is not None:
            assert all(1 <= r.first <= r.last <= 65535 for r in rule.ports)
            assert all(a.last + 1 < b.first for a, b in zip(rule.ports, rule.ports[1:]))


@given(
    st.sampled_from(["tcp", "udp"]),
    st.ip_addresses(),
    st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 100)), min_size=1, max_size=5),
)
def test_formatted_rules_round_trip(proto, address, items):
    port_items = [(a, min(a + d, 65535)) for a, d in items]
    port_text = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in port_items)
    host = f"[{address}]" if address.version == 6 else str(address)
    rule = parse_rule(f"{proto}://{host}:{port_text}", action="allow")
    expected_addr = getattr(address, "ipv4_mapped", None) or address
    assert rule.network == ipaddress.ip_network(expected_addr)
    for a, b in port_items:
        assert any(r.first <= a and b <= r.last for r in rule.ports)


# --- Default policy and combinations --------------------------------------


def test_defaults_allow_everything():
    policy = build_policy()
    assert policy.default == "allow" and policy.default_inferred and policy.is_trivial
    assert policy.decide("tcp", "93.184.215.14", 80).allowed


def test_any_allow_makes_default_deny():
    policy = build_policy(allow=["93.184.215.14:80"])
    assert policy.default == "deny" and policy.default_inferred
    assert policy.decide("tcp", "93.184.215.14", 80).allowed
    assert not policy.decide("tcp", "93.184.215.14", 81).allowed
    assert not policy.decide("udp", "93.184.215.14", 80).allowed


def test_explicit_default_policy_wins_over_inference():
    policy = build_policy(allow=["1.2.3.4"], default_policy="allow")
    assert policy.default == "allow" and not policy.default_inferred
    assert build_policy(default_policy="deny").default == "deny"


def test_deny_only_keeps_default_allow():
    policy = build_policy(deny=["2001:db8::/32", "icmp://*"])
    assert policy.default == "allow"
    assert not policy.decide("tcp", "2001:db8::5", 443).allowed
    assert policy.decide("udp", "2001:db8::5", 443).allowed  # tcp:// is the default scheme
    assert not policy.decide("icmp", "192.0.2.1").allowed
    assert not policy.decide("icmpv6", "2001:db8:1::1").allowed
    assert policy.decide("tcp", "192.0.2.1", 443).allowed


def test_bad_default_policy():
    with pytest.raises(UsageError, match=r"invalid --default-policy 'reject'"):
        build_policy(default_policy="reject")


def test_bad_spec_in_build_policy_names_its_flag():
    with pytest.raises(UsageError, match=r"^invalid --deny spec 'example.test'"):
        build_policy(allow=["1.2.3.4"], deny=["example.test"])


def test_offline_conflicts():
    with pytest.raises(UsageError, match="--offline cannot be combined with --allow '1.2.3.4'"):
        build_policy(offline=True, allow=["1.2.3.4"])
    with pytest.raises(UsageError, match="--default-policy allow"):
        build_policy(offline=True, default_policy="allow")


# --- Decisions and precedence ---------------------------------------------


def test_deny_wins_over_allow_regardless_of_order():
    policy = build_policy(allow=["10.1.0.0/16"], deny=["10.1.2.0/24:22"])
    d = policy.decide("tcp", "10.1.2.3", 22)
    assert d.verdict == "deny" and d.source == "rule" and d.rule.spec == "10.1.2.0/24:22"
    assert policy.decide("tcp", "10.1.2.3", 80).allowed
    assert str(d) == "deny (--deny '10.1.2.0/24:22')"


def test_first_matching_allow_is_reported():
    policy = build_policy(allow=[":443", "192.0.2.1"])
    assert policy.decide("tcp", "192.0.2.1", 443).rule.spec == ":443"
    assert policy.decide("tcp", "192.0.2.1", 80).rule.spec == "192.0.2.1"


def test_hostname_rules_use_caller_resolution():
    policy = build_policy(allow=["www.example.test:443"])
    assert policy.hostnames == ("www.example.test",)
    names = {"WWW.EXAMPLE.TEST.": ["192.0.2.80", "2001:db8::80"]}
    assert policy.decide("tcp", "192.0.2.80", 443, resolved_names=names).allowed
    assert policy.decide("tcp", "2001:db8::80", 443, resolved_names=names).allowed
    assert not policy.decide("tcp", "192.0.2.80", 80, resolved_names=names).allowed
    assert not policy.decide("tcp", "192.0.2.81", 443, resolved_names=names).allowed
    assert not policy.decide("tcp", "192.0.2.80", 443).allowed  # not resolved (yet)


def test_hostnames_are_distinct_and_ordered():
    policy = build_policy(allow=["b.test:443", "a.test", "B.test.:80"])
    assert policy.hostnames == ("b.test", "a.test")


def test_ipv4_mapped_destination_is_filtered_as_ipv4():
    policy = build_policy(deny=["192.0.2.0/24"])
    assert not policy.decide("tcp", "::ffff:192.0.2.7", 80).allowed


def test_loopback_always_allowed():
    policy = build_policy(deny=["*", "udp://*", "icmp://*"], default_policy="deny")
    for proto, addr, port in (("tcp", "127.0.0.1", 80), ("udp", "::1", 53), ("icmp", "127.9.9.9", None)):
        d = policy.decide(proto, addr, port)
        assert d.allowed and d.source == "local"


def test_offline_denies_everything_but_loopback():
    policy = build_policy(offline=True)
    assert policy.default == "deny"
    d = policy.decide("udp", "10.0.2.3", 53)
    assert not d.allowed and d.source == "offline" and str(d) == "deny (--offline)"
    assert policy.decide("tcp", "127.0.0.1", 8080).allowed


def test_block_private_presets_and_host_addresses():
    policy = build_policy(block_private=True, host_addresses=["192.0.2.2", "10.0.2.2"])
    for addr in ("10.1.1.1", "172.31.0.1", "192.168.1.1", "100.64.0.1", "169.254.1.1",
                 "fd12::1", "fe80::1", "192.0.2.2"):
        d = policy.decide("tcp", addr, 80)
        assert d.verdict == "deny" and d.source == "block-private", addr
    assert policy.decide("tcp", "192.0.2.3", 80).allowed
    assert policy.decide("tcp", "172.32.0.1", 80).allowed
    # 10.0.2.2 lies inside 10/8: collapsed, so nft interval sets never overlap.
    assert ipaddress.ip_network("10.0.2.2/32") not in policy.private_networks


def test_block_private_beats_allow():
    policy = build_policy(allow=["10.0.0.0/8"], block_private=True)
    assert policy.decide("tcp", "10.1.1.1", 80).source == "block-private"


def test_block_metadata():
    policy = build_policy(block_metadata=True, allow=["metadata.google.internal"])
    for addr in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"):
        names = {"metadata.google.internal": [addr]}
        d = policy.decide("tcp", addr, 80, resolved_names=names)
        assert d.source == "block-metadata" and not d.allowed
        assert policy.is_metadata_address(addr)
    assert not policy.is_metadata_address("169.254.1.1")
    assert "metadata.google.internal" in policy.metadata_hostnames
    assert build_policy().metadata_hostnames == ()


def test_metadata_reported_before_private():
    policy = build_policy(block_metadata=True, block_private=True)
    assert policy.decide("tcp", "169.254.169.254", 80).source == "block-metadata"


def test_dns_resolver_passes_presets_and_default_but_not_user_deny():
    policy = build_policy(allow=["www.example.test:443"], block_private=True,
                          dns_servers=["10.0.2.3"])
    assert policy.decide("udp", "10.0.2.3", 53).source == "dns"
    assert policy.decide("tcp", "10.0.2.3", 53).source == "dns"
    assert policy.decide("udp", "10.0.2.3", 54).source == "block-private"
    denied = build_policy(deny=["udp://*:53"], dns_servers=["10.0.2.3"])
    assert denied.decide("udp", "10.0.2.3", 53).source == "rule"
    assert build_policy(offline=True, dns_servers=["10.0.2.3"]).decide(
        "udp", "10.0.2.3", 53).source == "offline"


def test_port_ranges_and_lists_match():
    policy = build_policy(allow=["udp://192.0.2.9:53,5000-5010"])
    assert [policy.decide("udp", "192.0.2.9", p).allowed for p in (52, 53, 54, 4999, 5000, 5010, 5011)] == [
        False, True, False, False, True, True, False]


def test_icmp_rules_match_both_families():
    policy = build_policy(allow=["icmp://*"])
    assert policy.decide("icmp", "192.0.2.1").allowed
    assert policy.decide("icmp", "2001:db8::1").allowed
    assert not policy.decide("tcp", "192.0.2.1", 80).allowed
    family_bound = build_policy(allow=["icmp://192.0.2.0/24"])
    assert not family_bound.decide("icmp", "2001:db8::1").allowed


def test_decide_rejects_programming_errors():
    policy = build_policy()
    with pytest.raises(ValueError):
        policy.decide("sctp", "192.0.2.1", 80)
    with pytest.raises(ValueError):
        policy.decide("tcp", "192.0.2.1")
    with pytest.raises(ValueError):
        policy.decide("tcp", "not-an-ip", 80)


def test_preset_constants():
    assert net("100.64.0.0/10") in PRIVATE_NETWORKS and net("fc00::/7") in PRIVATE_NETWORKS
    assert net("169.254.169.254/32") in METADATA_NETWORKS
    assert isinstance(build_policy(), Policy)


@given(
    st.lists(st.sampled_from(["10.0.0.0/8", ":443", "udp://:53", "icmp://*", "192.0.2.0/24:80-90",
                              "[2001:db8::/32]:22", "*"]), max_size=4),
    st.lists(st.sampled_from(["10.1.0.0/16", "udp://*", "icmp://*", ":22", "2001:db8:1::/48"]),
             max_size=3),
    st.sampled_from(["tcp", "udp", "icmp"]),
    st.ip_addresses(),
    st.integers(1, 65535),
)
def test_deny_always_wins(allow, deny, proto, addr, port):
    policy = build_policy(allow=allow, deny=deny)
    port_or_none = None if proto == "icmp" else port
    d = policy.decide(proto, addr, port_or_none)
    # What each sampled --deny spec means, written down here (the grammar in
    # the README), not asked of Rule.matches: tcp:// is the default scheme,
    # and an IPv4-mapped IPv6 address is its IPv4 address.
    plain = getattr(addr, "ipv4_mapped", None) or addr
    meaning = {
        "10.1.0.0/16": proto == "tcp" and plain in ipaddress.ip_network("10.1.0.0/16"),
        "udp://*": proto == "udp",
        "icmp://*": proto == "icmp",
        ":22": proto == "tcp" and port_or_none == 22,
        "2001:db8:1::/48": proto == "tcp" and plain in ipaddress.ip_network("2001:db8:1::/48"),
    }
    denying = [spec for spec in deny if meaning[spec]]
    if denying and d.source != "local":
        assert d.verdict == "deny" and d.rule.spec == denying[0], (d, denying)
    elif not denying:
        assert d.verdict == "allow" or d.source != "rule" or d.rule.spec not in deny, d


# --- The same specs through the command line ------------------------------


@pytest.mark.parametrize("spec, reason", MALFORMED)
@pytest.mark.parametrize("flag", ["--allow", "--deny"])
def test_malformed_specs_through_the_cli(spec, reason, flag):
    from netwrap.cli import options as cli

    if flag == "--deny" and "IDNA" in reason:
        reason = "non-ASCII"
    with pytest.raises(UsageError) as info:
        cli.parse([f"{flag}={spec}", "--", "true"])  # '=': a spec may start with '-'
    message = str(info.value)
    assert info.value.exit_status == 2 and "\n" not in message
    assert message.startswith(f"invalid {flag} spec {repr(spec if len(spec) <= 200 else spec[:200])}")
    assert reason.split("(")[0].strip() in message, message
