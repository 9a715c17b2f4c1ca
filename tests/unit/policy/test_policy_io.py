"""The policy's CLI flags and refusals before anything starts (its start-time helpers: test_policy_startup)."""

from __future__ import annotations

import pytest

from netwrap.cli import options as cli
from netwrap.sandbox import setup
from netwrap.errors import NetwrapError, UsageError


def parse(*args):
    return cli.parse([*args, "--", "true"])


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
    with pytest.raises(UsageError, match=r"--flow-log '/nonexistent/x': No such file or directory"):
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


def test_policy_without_nft_is_refused_naming_the_package(monkeypatch):
    monkeypatch.setattr(setup, "which", lambda name: None)
    with pytest.raises(NetwrapError, match="--offline needs nftables .*install the 'nftables' package"):
        setup.check(parse("--offline"))
    assert setup.check(parse()) is None  # nothing asked, nothing needed
    with pytest.raises(NetwrapError, match="--offline needs nftables"):
        setup.check(parse("--offline"), "pasta")


def test_tunrelay_without_nft_enforces_in_its_engine_but_refuses_the_flow_log(monkeypatch):
    monkeypatch.setattr(setup, "which", lambda name: None)
    assert setup.check(parse("--offline"), "tunrelay") is None
    with pytest.raises(NetwrapError, match="--flow-log needs nftables .*'nftables' package"):
        setup.check(parse("--allow", "1.2.3.4", "--flow-log", "/tmp/x"), "tunrelay")


def test_help_names_the_policy_flags(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--offline", "--block-private", "--block-metadata", "--allow SPEC", "--deny SPEC",
                 "--default-policy", "--flow-log FILE"):
        assert flag in text
