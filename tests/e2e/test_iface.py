"""-i/--iface: the command's direct traffic leaves the host by the interface named.

The world's host has a second uplink (nwveth2, 198.18.0.2 and 2001:db8:fe::2)
whose default routes lose to the first one's; the far end's log shows by
which uplink each connection came (its peer address), and the internet drops
the second uplink's addresses arriving by the first veth, so an address bound
without the route cannot pass for the uplink.
"""

from __future__ import annotations

from world.addresses import HOST2_V4, HOST2_V6, HOST_IF2
from world.harness import World


def test_direct_traffic_leaves_by_the_chosen_interface(world: World, backend, as_user: bool) -> None:
    mark = world.mark()
    script = (f"curl -sS -m 10 http://{World.WORLD_V4}/hello && "
              f"curl -sS -m 10 'http://[{World.WORLD_V6}]/hello'")
    done = world.netwrap(*backend.argv, "-i", HOST_IF2, "--", "sh", "-c", script, user=as_user)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from the world\n" * 2, done.stderr
    seen = [(r["local"], r["peer"]) for r in world.http_log(since=mark)]
    assert seen == [(World.WORLD_V4, HOST2_V4), (World.WORLD_V6, HOST2_V6)]
    # The world's host resolves through 127.0.0.53: pasta, bound to IFACE, cannot reach it and says so.
    warned = f"pasta cannot reach the host's resolver 127.0.0.53 on its loopback from {HOST_IF2}"
    assert (warned in done.stderr) is (backend.name == "pasta"), done.stderr


def test_a_forced_resolver_is_reached_by_the_chosen_interface_too(world: World, backend) -> None:
    mark = world.mark()
    done = world.netwrap(*backend.argv, "-i", HOST_IF2, "-d", World.DNS_V4, "--",
                         "curl", "-sS", "-m", "10", "http://www.example.test/hello")
    assert (done.returncode, done.stdout) == (0, "hello from the world\n"), done.stderr
    assert "warning" not in done.stderr
    queries = [(r["local"], r["peer"]) for r in world.dns_log(since=mark) if r["qname"] == "www.example.test"]
    assert queries and set(queries) == {(World.DNS_V4, HOST2_V4)}, queries
    assert [r["peer"] for r in world.http_log(since=mark)] == [HOST2_V4]


def test_an_unknown_interface_is_refused_before_anything_starts(world: World, as_user: bool) -> None:
    # (An interface without IPv4 is refused the same way: tests/unit/cli/test_cli.py, with lo. Here
    # lo has 192.0.2.200, a host address, so every interface of the world has IPv4.)
    mark = world.mark()
    done = world.netwrap("-i", "nwnope9", "--", "curl", "-sS", "-m", "5", f"http://{World.WORLD_V4}/hello",
                         user=as_user)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "netwrap: error: --iface nwnope9: no such interface (see 'ip link')\n"
    assert world.http_log(since=mark) == []
