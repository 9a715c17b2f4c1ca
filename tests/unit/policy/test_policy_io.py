"""The policy's CLI flags and refusals before anything starts (its start-time helpers: test_policy_startup)."""

from __future__ import annotations

import ipaddress

import attrs
import pytest

from netwrap.cli import options as cli
from netwrap.sandbox import setup
from netwrap.policy import startup
from netwrap.config import Tools
from netwrap.errors import NetwrapError, UsageError


def parse(*args):
    return cli.parse([*args, "--", "true"])


def without_nft(*args):
    """The Config of these flags on a machine without nftables (or ip)."""
    return attrs.evolve(parse(*args), tools=Tools(nft=None, ip=None))


def test_flags_reach_the_config():
    config = parse("--allow", "93.184.215.14:80", "--allow", "udp://198.51.100.53:53", "--deny", "icmp://*",
                   "--default-policy", "deny", "--block-private", "--block-metadata")
    assert config.allow == ("93.184.215.14:80", "udp://198.51.100.53:53") and config.deny == ("icmp://*",)
    assert config.default_policy == "deny" and config.block_private and config.block_metadata
    assert not config.offline and config.flow_log is None
    assert setup.policy_flags(config) == ["--block-private", "--block-metadata", "--allow", "--deny",
                                             "--default-policy"]
    assert setup.policy_flags(parse()) == []


def test_flow_log_path_is_checked_first(tmp_path):
    config = parse("--flow-log", str(tmp_path / "flows.jsonl"))
    assert config.flow_log == str(tmp_path / "flows.jsonl") and setup.policy_flags(config) == ["--flow-log"]
    with pytest.raises(UsageError, match=r"--flow-log '/nonexistent/x': directory /nonexistent does not exist"):
        parse("--flow-log", "/nonexistent/x")


@pytest.mark.parametrize("args, message", [
    (["--offline", "--allow", "1.2.3.4"], "--offline cannot be combined with --allow '1.2.3.4'"),
    (["--offline", "--default-policy", "allow"], "--offline cannot be combined with --default-policy allow"),
    (["--default-policy", "block"], "invalid --default-policy 'block'"),
    (["--block-private", "--allow-host-loopback"], "--block-private cannot be combined with --allow-host-loopback"),
])
def test_conflicts_are_usage_errors(args, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse(*args)


def test_policy_without_nft_is_refused_naming_the_package():
    with pytest.raises(NetwrapError, match="--offline needs nftables .*install the 'nftables' package"):
        setup.check(without_nft("--offline"))
    assert setup.check(without_nft()) is None  # nothing asked, nothing needed
    with pytest.raises(NetwrapError, match="--offline needs nftables"):
        setup.check(without_nft("--offline"), "pasta")


def test_tunrelay_without_nft_enforces_in_its_engine_but_refuses_the_flow_log(tmp_path):
    assert setup.check(without_nft("--offline"), "tunrelay") is None
    with pytest.raises(NetwrapError, match="--flow-log needs nftables .*'nftables' package"):
        setup.check(without_nft("--allow", "1.2.3.4", "--flow-log", str(tmp_path / "flows.jsonl")), "tunrelay")
    # Its engine knows the allowed names' addresses from the start only: it has no DNS proxy.
    with pytest.raises(NetwrapError, match="--dns-allowed-only needs nftables .*'nftables' package"):
        setup.check(without_nft("--allow", "www.example.test", "--dns-allowed-only"), "tunrelay")


def test_the_nft_the_config_names_is_the_one_used():
    config = attrs.evolve(parse("--offline"), tools=Tools(nft="/opt/nft/sbin/nft"))
    assert setup.check(config, "pasta") == "/opt/nft/sbin/nft"
    assert setup.check(attrs.evolve(parse("--dns", "192.0.2.53"), tools=Tools(nft="/x/nft")), "pasta") == "/x/nft"


def test_help_names_the_policy_flags(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--offline", "--block-private", "--block-metadata", "--allow SPEC", "--deny SPEC",
                 "--default-policy", "--flow-log FILE"):
        assert flag in text


def test_the_policy_is_parsed_once_into_the_config():
    config = parse("--allow", "93.184.215.14:80", "--deny", "icmp://*", "--block-private")
    assert [r.spec for r in config.policy.allow_rules] == ["93.184.215.14:80"]
    assert [r.spec for r in config.policy.deny_rules] == ["icmp://*"]
    assert config.policy.block_private and config.policy.default == "deny"
    assert parse("--summary").policy is not None  # counts flows: the (trivial) policy is needed
    assert parse().policy is None  # nothing asked: nothing parsed


def test_the_backend_network_joins_the_parsed_policy():
    config = parse("--block-private")
    policy = startup.build(config, host_addresses=["198.51.100.7", "::ffff:203.0.113.9"], dns_servers=["10.0.2.3"])
    assert policy.dns_servers == (ipaddress.ip_address("10.0.2.3"),)
    assert policy.decide("tcp", "198.51.100.7", 80).verdict == "deny"
    assert policy.decide("tcp", "203.0.113.9", 80).verdict == "deny"
    assert policy.decide("tcp", "198.51.100.8", 80).verdict == "allow"
    assert policy.decide("tcp", "10.9.9.9", 80).verdict == "deny"  # the preset stays
    assert config.policy.decide("tcp", "198.51.100.7", 80).verdict == "allow"  # the parsed one is unchanged
