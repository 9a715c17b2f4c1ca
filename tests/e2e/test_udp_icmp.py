"""UDP and ICMP echo through every backend; a capability a backend lacks is declared.

The world echoes UDP on port 7 (answering from the address that was asked)
and answers pings on every address.
"""

from __future__ import annotations

import pytest

from world.harness import World

UDP_ECHO = """
import socket, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(b"netwrap-udp-probe", (addr, 7))
data, peer = s.recvfrom(2048)
print(data.decode(), peer[0])
"""


def declared_capabilities(world: World, backend: str, as_user: bool) -> set[str]:
    """What the backend declares, as netwrap sees it for this user here."""
    done = world.netwrap("backends", user=as_user)
    lines = done.stdout.splitlines()
    at = next(i for i, l in enumerate(lines) if l.startswith(f"{backend}:"))
    return {c.strip() for c in lines[at + 1].split(":", 1)[1].split(",")}


@pytest.mark.parametrize("addr", [World.WORLD_V4, World.WORLD_V6], ids=["ipv4", "ipv6"])
def test_udp_round_trip(world: World, backend: str, as_user: bool, addr: str) -> None:
    mark = world.mark()
    done = world.netwrap(*backend.argv, "--", world.python, "-c", UDP_ECHO, addr, user=as_user)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["netwrap-udp-probe", addr]
    [record] = [r for r in world.echo_log(since=mark) if r["size"] == len("netwrap-udp-probe")]
    assert record["local"] == addr and record["proto"] == "udp"


# What each backend can do with ICMP echo in the test world, written down here
# rather than read from netwrap: a backend that wrongly dropped a capability
# would otherwise turn a failing ping into an expected one.  The world's host
# namespace lets every group open ping sockets; slirp4netns (libslirp 4.7)
# has no IPv6 echo.
ECHO_CAPABILITIES = {
    "pasta": {"icmp", "icmp6"},
    "slirp4netns": {"icmp"},
    "tunrelay": {"icmp", "icmp6"},
}


def test_declared_echo_capabilities(world: World, backend: str, as_user: bool) -> None:
    declared = declared_capabilities(world, backend, as_user)
    assert declared & {"icmp", "icmp6"} == ECHO_CAPABILITIES[backend.name]


@pytest.mark.parametrize("family, addr, capability", [
    ("-4", World.WORLD_V4, "icmp"), ("-6", World.WORLD_V6, "icmp6"),
], ids=["ipv4", "ipv6"])
def test_ping_works_where_declared(world: World, backend: str, as_user: bool, family: str, addr: str,
                                   capability: str) -> None:
    done = world.netwrap(*backend.argv, "--", "ping", family, "-c", "2", "-W", "2", "-i", "0.2", addr,
                         user=as_user)
    if capability in ECHO_CAPABILITIES[backend.name]:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 packets transmitted, 2 received" in done.stdout
    else:
        # The gap is declared, and real: no echo replies come back.
        assert done.returncode != 0
        assert " 0 received" in done.stdout, done.stdout + done.stderr


def test_option_needing_a_missing_capability_is_refused(world: World, as_user: bool) -> None:
    # slirp4netns gets IPv6 only through `ip` (iproute2): without it, an IPv6
    # resolver cannot be reached, and netwrap says so before starting.
    bindir = world.program_dir("noip", user=as_user)
    for name in ("slirp4netns", "nft", "sh", "true"):
        (bindir / name).symlink_to(f"/usr/bin/{name}" if name != "nft" else "/usr/sbin/nft")
    helpers, env = world.helpers_from(str(bindir), user=as_user)
    done = world.netwrap(*helpers, "--backend", "slirp4netns", "-d", World.DNS_V6, "--", "true", user=as_user,
                         env=env)
    assert done.returncode == 125
    assert done.stderr.splitlines() == [
        f"netwrap: --dns {World.DNS_V6} needs ipv6, which backend slirp4netns lacks here "
        "(see 'netwrap backends'; try --backend pasta or tunrelay)"], done.stderr
