"""The guard: prove the host namespace can only reach the internet namespace.

The host has two uplinks (addresses.UPLINKS), both veths to the internet
namespace; every route must leave by one of them (or stay on lo).

Run once, before the world sends or serves anything.  The decisions are pure
functions of `ip -j` output (unit-tested with made-up tables); `inspect()`
gathers that output for the live namespaces.  A problem list that is not
empty means: stop the test run, send nothing.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable

from . import netns
from .addresses import UPLINKS

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


def route_problems(routes: Iterable[dict], uplinks: Collection[str], where: str) -> list[str]:
    """Routes (any table, either family) that could leave other than by one of `uplinks`.

    Unicast routes must name an uplink or lo (loopback never leaves); every
    nexthop of a multipath route likewise; a route whose device cannot be
    seen (nexthop objects) is refused, since we cannot prove where it goes.
    """
    ok_devs = {*uplinks, "lo"}
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
                problems.append(f"{text} leaves by {dev!r}, not by {' or '.join(map(repr, sorted(uplinks)))}")
    return problems


def pairing_problems(host_links: list[dict], inet_links: list[dict], host_nsids: list[dict],
                     inet_name: str, pairs: Iterable[tuple[str, str]] = UPLINKS) -> list[str]:
    """Each host uplink must be a veth whose peer is its interface in the internet namespace."""
    problems = []
    for host_name, inet_if_name in pairs:
        problems += _pair_problems(host_links, inet_links, host_nsids, inet_name, host_name, inet_if_name)
    return problems


def _pair_problems(host_links: list[dict], inet_links: list[dict], host_nsids: list[dict], inet_name: str,
                   host_name: str, inet_if_name: str) -> list[str]:
    host_if = next((link for link in host_links if link.get("ifname") == host_name), None)
    inet_if = next((link for link in inet_links if link.get("ifname") == inet_if_name), None)
    if host_if is None or inet_if is None:
        return [f"the veth {host_name}-{inet_if_name} between host and internet is missing"]
    problems = []
    if host_if.get("linkinfo", {}).get("info_kind") != "veth":
        problems.append(f"host: {host_name} is not a veth")
    nsid_names = {entry.get("nsid"): entry.get("name") for entry in host_nsids}
    if nsid_names.get(host_if.get("link_netnsid")) != inet_name:
        problems.append(f"host: the peer of {host_name} is not in namespace {inet_name}")
    if host_if.get("link_index") != inet_if.get("ifindex") or inet_if.get("link_index") != host_if.get("ifindex"):
        problems.append(f"host: {host_name} and {inet_if_name} are not each other's peer")
    return problems


def _json(*args: str, ns: str) -> list[dict]:
    return json.loads(netns.ip("-j", *args, netns=ns) or "[]")


def inspect(host: str, inet: str) -> list[str]:
    """All problems of the live world (host and internet namespaces)."""
    host_links = _json("-d", "link", "show", ns=host)
    inet_links = _json("-d", "link", "show", ns=inet)
    host_ifs = {host_if for host_if, _ in UPLINKS}
    inet_ifs = {inet_if for _, inet_if in UPLINKS}
    problems = link_problems(host_links, {"lo", *host_ifs}, "host")
    problems += link_problems(inet_links, {"lo", *inet_ifs}, "internet")
    problems += pairing_problems(host_links, inet_links, _json("netns", "list-id", ns=host), inet)
    for family in ("-4", "-6"):
        problems += route_problems(_json(family, "route", "show", "table", "all", ns=host), host_ifs, "host")
        problems += route_problems(_json(family, "route", "show", "table", "all", ns=inet), inet_ifs, "internet")
    return problems
