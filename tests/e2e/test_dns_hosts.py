"""DNS and /etc/hosts in the sandbox, for every backend, rootless and rootful.

The world's host resolves through a stub on its loopback (127.0.0.53) behind
a symlinked /etc/resolv.conf, as systemd-resolved hosts do; the stub forwards
to the world's resolver at 198.51.100.53. Both log every query.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import pytest

from world.harness import World

DIG_OPTIONS = "+time=2 +tries=1 +short"


def netwrap(world: World, backend, *args: str, user: bool = True):
    return world.netwrap(*backend.argv, *args, user=user)


def test_names_resolve_through_the_hosts_loopback_resolver(world: World, backend: str, as_user: bool) -> None:
    mark = world.mark()
    done = netwrap(world, backend, "--", "sh", "-c", "cat /etc/resolv.conf; getent ahostsv4 www.example.test",
                   user=as_user)
    assert done.returncode == 0, done.stderr
    assert "93.184.215.14" in done.stdout.split("# written by netwrap")[-1]
    nameservers = [l.split()[1] for l in done.stdout.splitlines() if l.startswith("nameserver")]
    assert nameservers and "127.0.0.53" not in nameservers  # the sandbox's own loopback has no resolver
    # The query went through the host's stub on its loopback, then the world.
    assert any(r["qname"] == "www.example.test" for r in world.resolver_log(since=mark))
    assert any(r["qname"] == "www.example.test" and r["local"] == World.DNS_V4 for r in world.dns_log(since=mark))


@pytest.mark.parametrize("resolver, family", [(World.DNS_V4, "-4"), (World.DNS_V6, "-6")], ids=["ipv4", "ipv6"])
def test_forced_resolver_gets_every_dns_flow(world: World, backend: str, as_user: bool, resolver: str,
                                             family: str) -> None:
    others = ("8.8.8.8", "1.1.1.1") if family == "-4" else ("2001:4860:4860::8888", "2606:4700:4700::1111")
    script = (f"cat /etc/resolv.conf; dig {family} {DIG_OPTIONS} @{others[0]} www.example.test A; "
              f"dig {family} {DIG_OPTIONS} +tcp @{others[1]} www.example.test A")
    mark = world.mark()
    done = netwrap(world, backend, "-d", resolver, "--", "sh", "-c", script, user=as_user)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"nameserver {resolver}" in lines
    assert lines.count("93.184.215.14") == 2, done.stdout
    seen = [(r["proto"], r["local"]) for r in world.dns_log(since=mark) if r["qname"] == "www.example.test"]
    # Both queries reached the forced resolver, none the addresses dig named.
    assert ("udp", resolver) in seen and ("tcp", resolver) in seen, seen
    assert not [s for s in seen if s[1] in others]


# A forced resolver and "third" servers the command names, all distinct world addresses.
THIRD_V4 = ("8.8.8.8", "1.1.1.1")
THIRD_V6 = ("2001:4860:4860::8888", "2606:4700:4700::1111")
OTHER_RESOLVER_V4 = "203.0.113.53"


@contextlib.contextmanager
def host_resolver(world: World, address: str) -> Iterator[None]:
    """The world's host names `address` in its resolv.conf (instead of its loopback stub) meanwhile."""
    path = world.tmp / "run" / "resolv.conf"
    before = path.read_text()
    path.write_text(f"nameserver {address}\n")
    try:
        yield
    finally:
        path.write_text(before)


def asked(world: World, mark, name: str = "www.example.test") -> list[tuple[str, str]]:
    """(protocol, address) of every query for `name` the world's DNS answered since `mark`."""
    return [(r["proto"], r["local"]) for r in world.dns_log(since=mark) if r["qname"] == name]


def test_forced_resolver_that_is_the_hosts_own(world: World, backend, as_user: bool) -> None:
    # pasta rewrites the source of answers from the host's first resolver
    # (field notes): DNS NAT'd to that resolver through pasta never came back.
    script = (f"dig -4 {DIG_OPTIONS} @{THIRD_V4[0]} www.example.test A; "
              f"dig -4 {DIG_OPTIONS} +tcp @{THIRD_V4[1]} www.example.test A")
    with host_resolver(world, World.DNS_V4):
        mark = world.mark()
        done = netwrap(world, backend, "-d", World.DNS_V4, "--", "sh", "-c", script, user=as_user)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [World.WORLD_V4, World.WORLD_V4], done.stdout
    assert sorted(asked(world, mark)) == [("tcp", World.DNS_V4), ("udp", World.DNS_V4)]
    assert [r for r in world.resolver_log(since=mark) if r["qname"] == "www.example.test"] == []


@pytest.mark.parametrize("forced, family, third", [
    (World.DNS_V6, "-4", THIRD_V4), (OTHER_RESOLVER_V4, "-6", THIRD_V6)], ids=["v6-resolver", "v4-resolver"])
def test_forced_resolver_of_one_family_answers_the_other(world: World, backend, as_user: bool, forced: str,
                                                        family: str, third: tuple[str, str]) -> None:
    script = (f"dig {family} {DIG_OPTIONS} @{third[0]} www.example.test A; "
              f"dig {family} {DIG_OPTIONS} +tcp @{third[1]} www.example.test A")
    mark = world.mark()
    done = netwrap(world, backend, "-d", forced, "--", "sh", "-c", script, user=as_user)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [World.WORLD_V4, World.WORLD_V4], done.stdout
    # Both went to the forced resolver, in its own family; not to the host's
    # resolver (the stub, then 198.51.100.53) nor to the servers dig named.
    assert sorted(asked(world, mark)) == [("tcp", forced), ("udp", forced)]
    assert [r for r in world.resolver_log(since=mark) if r["qname"] == "www.example.test"] == []


def test_allowed_names_are_resolved_at_start_by_the_forced_resolver(world: World, backend, as_user: bool) -> None:
    mark = world.mark()
    done = netwrap(world, backend, "--allow", "www.example.test:80", "-d", OTHER_RESOLVER_V4, "--", "true",
                   user=as_user)
    assert done.returncode == 0, done.stderr
    seen = [(r["proto"], r["local"], r["qtype"]) for r in world.dns_log(since=mark)
            if r["qname"] == "www.example.test"]
    assert sorted(seen) == [("udp", OTHER_RESOLVER_V4, "A"), ("udp", OTHER_RESOLVER_V4, "AAAA")], seen
    assert [r for r in world.resolver_log(since=mark) if r["qname"] == "www.example.test"] == []


def test_hosts_file_replaces_etc_hosts_and_host_file_is_untouched(world: World, backend: str,
                                                                 as_user: bool) -> None:
    before = hashlib.sha256(open("/etc/hosts", "rb").read()).hexdigest()
    hosts = world.user_dir("hosts") / "hosts"
    hosts.write_text("127.0.0.1 localhost\n198.18.0.42 demo.internal\n")
    hosts.chmod(0o644)
    done = netwrap(world, backend, "--hosts-file", str(hosts), "--", "getent", "hosts", "demo.internal",
                   user=as_user)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["198.18.0.42", "demo.internal"]
    assert hashlib.sha256(open("/etc/hosts", "rb").read()).hexdigest() == before


def test_add_host_v4_and_v6(world: World, backend: str, as_user: bool) -> None:
    done = netwrap(world, backend, "--add-host", "a.test:203.0.113.7", "--add-host", "b.test:2001:db8::7",
                   "--", "sh", "-c", "getent hosts a.test; getent hosts b.test; grep -c localhost /etc/hosts",
                   user=as_user)
    assert done.returncode == 0, done.stderr
    lines = [l.split() for l in done.stdout.splitlines()]
    assert lines[0] == ["203.0.113.7", "a.test"] and lines[1] == ["2001:db8::7", "b.test"]
    assert int(lines[2][0]) >= 1  # on top of the host's hosts file


@pytest.mark.parametrize("args, message", [
    (["--dns", "not-an-ip"], "--dns 'not-an-ip': not an IPv4 or IPv6 address"),
    (["--hosts-file", "/missing/hosts"], "--hosts-file '/missing/hosts': No such file or directory"),
    (["--hosts-file", "{unreadable}"], "Permission denied"),
    (["--add-host", "nocolon"], "--add-host 'nocolon': expected NAME:IP"),
    (["--add-host", "x:999.1.1.1"], "--add-host 'x:999.1.1.1': '999.1.1.1' is not an IPv4 or IPv6 address"),
], ids=["dns", "hosts-missing", "hosts-unreadable", "add-host-nocolon", "add-host-bad-ip"])
def test_bad_dns_and_hosts_input_is_exit_2(world: World, args, message) -> None:
    unreadable = world.user_dir("secret") / "hosts"
    unreadable.write_text("1.2.3.4 x\n")
    unreadable.chmod(0o000)
    args = [a.format(unreadable=unreadable) for a in args]
    done = world.netwrap(*args, "--", "true")  # as the unprivileged user: the mode-0 file is unreadable
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
