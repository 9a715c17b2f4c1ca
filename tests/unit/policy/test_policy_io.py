"""The policy's CLI flags, refusals before anything starts, and policy_io's pure helpers."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from netwrap.cli import options as cli
from netwrap.sandbox import setup
from netwrap.policy import runtime as policy_io
from netwrap.backends import NetworkInfo
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
    with pytest.raises(UsageError, match=r"--flow-log /nonexistent/x: directory /nonexistent does not exist"):
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


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
     +-- 192.0.2.0/24 2 0 2
        |-- 192.0.2.0
           /24 link UNICAST
        |-- 192.0.2.2
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
20010db800ff00000000000000000002 02 40 00 80  nwveth0
"""
ROUTE = """Iface\tDestination\tGateway \tFlags
nwveth0\t00000000\t010200C0\t0003
nwveth0\t000200C0\t00000000\t0001
"""
IPV6_ROUTE = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
              "20010db800ff00000000000000000001 00000400 00000001 00000000 00000003  nwveth0\n")


def test_host_addresses_from_proc(monkeypatch):
    files = {"/proc/net/fib_trie": FIB_TRIE, "/proc/net/if_inet6": IF_INET6, "/proc/net/route": ROUTE,
             "/proc/net/ipv6_route": IPV6_ROUTE}
    monkeypatch.setattr(policy_io, "read_host_file", lambda path: files.get(path, ""))
    network = NetworkInfo(gateways=("10.0.2.2", "fd00::2"))
    assert policy_io.host_addresses(network) == ["192.0.2.2", "2001:db8:ff::2", "10.0.2.2", "fd00::2",
                                                 "192.0.2.1", "2001:db8:ff::1"]


def test_start_resolution_uses_resolvers_and_hosts_files(monkeypatch):
    answers = {"www.example.test": ["93.184.215.14", "2606:4700::1111"]}

    def fake_getaddrinfo(name, port, type=0):  # never the machine's resolver
        if name not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, 0)) for a in answers[name]]

    monkeypatch.setattr(policy_io.socket, "getaddrinfo", fake_getaddrinfo)
    found = policy_io.resolve_at_start(["www.example.test", "local.test"],
                                       ["127.0.0.1 localhost\n# x\n198.18.0.9 Local.Test. other\nbad line\n"])
    ip = ipaddress.ip_address
    assert found == {"www.example.test": {ip("93.184.215.14"), ip("2606:4700::1111")},
                     "local.test": {ip("198.18.0.9")}}
