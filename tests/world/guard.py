"""The guard: prove the host namespace can only reach the internet namespace.

Run once, before the world sends or serves anything.  The decisions are pure
functions of `ip -j` output (unit-tested with made-up tables); `inspect()`
gathers that output for the live namespaces.  A problem list that is not
empty means: stop the test run, send nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from . import netns
from .addresses import HOST_IF, INET_IF

# Route types that deliver locally or drop: they never put a packet on a link
# other than the one they name, and that one is checked via the interface list.
_LOCAL_TYPES = {"local", "broadcast", "anycast", "multicast"}
_DROP_TYPES = {"unreachable", "prohibit", "blackhole", "throw"}


def link_problems(links: Iterable[dict], allowed: set[str], where: str) -> list[str]:
    """Interfaces other than `allowed` (and missing allowed ones)."""
    names = [link.get("ifname", "?") for link in links]
    problems = [f"{where}: unexpected interface {name!r}" for name in names if name not in allowed]
    problems += [f"{where}: interface {name!r} is missing" for name in sorted(allowed - set(names))]
    return problems


def route_problems(routes: Iterable[dict], uplink: str, where: str) -> list[str]:
    """Routes (any table, either family) that could leave other than by `uplink`.

    Unicast routes must name `uplink` or lo (loopback never leaves); every
    nexthop of a multipath route likewise; a route whose device cannot be
    seen (nexthop objects) is refused, since we cannot prove where it goes.
    """
    ok_devs = {uplink, "lo"}
    problems = []
    for route in routes:
        kind = route.get("type", "unicast")
        table = route.get("table", "main")
        text = f"{where}: {kind} {route.get('dst', '?')} table {table}"
        if kind in _DROP_TYPES:
            continue
        if kind in _LOCAL_TYPES:
            if route.get("dev", "lo") not in ok_devs:
                problems.append(f"{text} is on {route.get('dev')!r}")
            continue
        if kind != "unicast":
            problems.append(f"{text}: route type not understood")
            continue
        hops = route.get("nexthops") or [route]
        for hop in hops:
            dev = hop.get("dev")
            if dev is None:
                problems.append(f"{text} names no device (nexthop object?)")
            elif dev not in ok_devs:
                problems.append(f"{text} leaves by {dev!r}, not {uplink!r}")
    return problems


def pairing_problems(host_links: list[dict], inet_links: list[dict], host_nsids: list[dict],
                     inet_name: str) -> list[str]:
    """The host's uplink must be a veth whose peer is the internet's interface."""
    host_if = next((link for link in host_links if link.get("ifname") == HOST_IF), None)
    inet_if = next((link for link in inet_links if link.get("ifname") == INET_IF), None)
    if host_if is None or inet_if is None:
        return ["the veth between host and internet is missing"]
    problems = []
    if host_if.get("linkinfo", {}).get("info_kind") != "veth":
        problems.append(f"host: {HOST_IF} is not a veth")
    nsid_names = {entry.get("nsid"): entry.get("name") for entry in host_nsids}
    if nsid_names.get(host_if.get("link_netnsid")) != inet_name:
        problems.append(f"host: the peer of {HOST_IF} is not in namespace {inet_name}")
    if host_if.get("link_index") != inet_if.get("ifindex") or inet_if.get("link_index") != host_if.get("ifindex"):
        problems.append(f"host: {HOST_IF} and {INET_IF} are not each other's peer")
    return problems


def _json(*args: str, ns: str) -> list[dict]:
    return json.loads(netns.ip("-j", *args, netns=ns) or "[]")


def inspect(host: str, inet: str) -> list[str]:
    """All problems of the live world (host and internet namespaces)."""
    host_links = _json("-d", "link", "show", ns=host)
    inet_links = _json("-d", "link", "show", ns=inet)
    problems = link_problems(host_links, {"lo", HOST_IF}, "host")
    problems += link_problems(inet_links, {"lo", INET_IF}, "internet")
    problems += pairing_problems(host_links, inet_links, _json("netns", "list-id", ns=host), inet)
    for family in ("-4", "-6"):
        problems += route_problems(_json(family, "route", "show", "table", "all", ns=host), HOST_IF, "host")
        problems += route_problems(_json(family, "route", "show", "table", "all", ns=inet), INET_IF, "internet")
    return problems
