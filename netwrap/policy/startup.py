"""What the network policy knows before the command starts.

The run's Policy built from the Config and what the backend set up (its
resolvers, the addresses through which it reaches the host), and the
addresses of the --allow hostnames now: from the forced resolver (--dns), else
through the host's resolvers (as the sandbox's DNS forwards to them), and the
hosts-file entries the sandbox sees.
Later answers are learned at run time (netwrap.policy.runtime).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from netwrap.linux.commands import debug
from netwrap.linux.hostfiles import default_gateways, ipv6_by_interface, local_ipv4, read_host_file
from netwrap.errors import NetwrapError
from netwrap.policy.model import Decision, IPAddress, Policy, normalize_address, normalize_hostname_key

if TYPE_CHECKING:
    from netwrap.backends import NetworkInfo
    from netwrap.config import Config


def build(config: Config, *, host_addresses: Iterable[str] = (), dns_servers: Iterable[str] = ()) -> Policy:
    """The Policy of a run: the one the CLI parsed once, with what the backend set up."""
    if config.policy is None:
        raise NetwrapError("the run's network policy was not parsed (netwrap.cli.options builds Config.policy)")
    # Under --dns every DNS flow goes to the forced resolver (netwrap.dns.path).
    return config.policy.with_network(host_addresses=host_addresses, dns_servers=dns_servers,
                                      dns_anywhere=bool(config.dns))


def start_time_decide(config: Config, network: NetworkInfo) -> Callable[..., Decision]:
    """The run's Policy.decide for an engine that judges each new flow itself
    (tunrelay without nftables), on the addresses the child sends to.

    --allow hostnames are resolved once, now: without nftables there is no
    DNS proxy to add the addresses the sandbox's DNS answers later.
    """
    resolvers = list(config.dns) if config.dns else list(network.dns)
    policy = build(config, dns_servers=resolvers, host_addresses=host_addresses(network))
    resolved = (resolve_at_start(policy.hostnames, hosts_texts(config), forced=config.dns)
                if policy.hostnames else {})
    return functools.partial(policy.decide, resolved_names=resolved)


# --- where the host is ---------------------------------------------------------------------------


def host_addresses(network: NetworkInfo) -> list[str]:
    """Every address through which the backend would reach the host itself (--block-private).

    The host's own addresses (a backend connects to them from the host), the
    backend's gateways (slirp4netns maps its gateway to the host), and the
    host's default gateways: pasta copies them into the sandbox and maps them
    to the host's loopback when that is open; closed, blocking the host's
    router as well costs nothing and keeps the rule simple.
    """
    own_v4 = local_ipv4(read_host_file("/proc/net/fib_trie"))
    own_v6 = [str(ipaddress.IPv6Address(a)) for a, _ in ipv6_by_interface(read_host_file("/proc/net/if_inet6"))]
    gateways = default_gateways(read_host_file("/proc/net/route"), read_host_file("/proc/net/ipv6_route"))
    out: dict[str, None] = {}
    for text in [*own_v4, *own_v6, *network.gateways, *gateways]:
        try:
            addr = normalize_address(text.split("/")[0])
        except ValueError:
            continue
        if not addr.is_loopback:
            out[str(addr)] = None
    return list(out)


# --- names at start ------------------------------------------------------------------------------


def resolve_at_start(names: Iterable[str], hosts_texts: Iterable[str] = (), *,
                     forced: Sequence[str] = ()) -> dict[str, set[IPAddress]]:
    """Each allowed hostname's addresses now, from whoever answers the
    sandbox's DNS: the forced resolvers (--dns) when given, asked directly
    (the first that answers), else the host's resolvers (as the sandbox's
    DNS forwards to them); plus hosts-file entries the sandbox sees."""
    result: dict[str, set[IPAddress]] = {}
    for name in names:
        result[name] = _ask_forced(name, forced) if forced else _ask_host(name)
    for text in hosts_texts:
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            try:
                addr = normalize_address(fields[0].split("%")[0])
            except ValueError:
                continue
            for alias in fields[1:]:
                key = normalize_hostname_key(alias)
                if key in result:
                    result[key].add(addr)
    return result


def _ask_host(name: str) -> set[IPAddress]:
    found: set[IPAddress] = set()
    try:
        for *_, sockaddr in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM):
            found.add(normalize_address(sockaddr[0].split("%")[0]))
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        debug(f"--allow {name}: not resolved at start ({exc})")
    return found


def _ask_forced(name: str, resolvers: Sequence[str]) -> set[IPAddress]:
    from netwrap.dns import lookup

    for resolver in resolvers:
        try:
            return {normalize_address(a) for a in lookup.addresses(resolver, name)}
        except (OSError, ValueError) as exc:
            debug(f"--allow {name}: {resolver} did not answer at start ({exc})")
    return set()


def hosts_texts(config: Config) -> list[str]:
    """The hosts-file texts the sandbox sees beyond the host's own: --hosts-file, --add-host."""
    texts = []
    if config.hosts_text is not None:
        texts.append(config.hosts_text)
    if config.add_hosts:
        texts.append("".join(f"{ip} {name}\n" for name, ip in config.add_hosts))
    return texts
