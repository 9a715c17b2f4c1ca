"""Network policy: the --allow/--deny grammar, presets, and flow decisions.

Pure code in the h11 style: strings and addresses in, values out, no I/O.
The I/O layer resolves hostnames and hands the answers in as a mapping
name -> addresses; :mod:`netwrap.policy.nft` renders the same policy as
nftables text, and :meth:`Policy.decide` is the reference for what that
ruleset does (tests compare the two; a flow log uses ``Decision``).

The spec grammar (``parse_rule``, ``Rule``, ``PortRange``) lives in
:mod:`netwrap.policy.spec` and is re-exported here.

Order of evaluation, shared with the nftables chain (first match decides):
the sandbox's own addresses, --offline, --deny rules, the sandbox's DNS
resolver on port 53, --block-metadata, --block-private, --allow rules,
the default policy. Deny therefore wins over allow.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Optional, Union

import attrs

from netwrap.errors import UsageError
from netwrap.policy.spec import (  # re-exported: the public API of the policy
    MAX_SPEC_LENGTH,
    SCHEMES,
    Action,
    IPAddress,
    IPNetwork,
    PortRange,
    Proto,
    Rule,
    normalize_hostname_key,
    parse_rule,
)

__all__ = [
    "LOOPBACK_NETWORKS", "MAX_SPEC_LENGTH", "METADATA_HOSTNAMES", "METADATA_NETWORKS",
    "PRIVATE_NETWORKS", "SCHEMES", "Action", "Decision", "IPAddress", "IPNetwork",
    "Policy", "PortRange", "Proto", "Rule", "build_policy", "collapse",
    "normalize_address", "normalize_hostname_key", "parse_rule",
]

# --- Presets: every address constant lives here, and only here. ----------

#: --block-private: RFC 1918, shared address space (RFC 6598), IPv4
#: link-local, unique-local and link-local IPv6.  The backend's own routes
#: to the host are added per run (``host_addresses``).
PRIVATE_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)

#: --block-metadata: cloud instance-metadata endpoints (AWS/GCP/Azure/OCI
#: IPv4, AWS IPv6, Alibaba Cloud).
METADATA_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32")
)

#: Names that point at the metadata endpoints.  The DNS/hosts layer answers
#: them with NXDOMAIN under --block-metadata; any *other* name whose answer
#: is a metadata address is caught by ``Policy.is_metadata_address``.
METADATA_HOSTNAMES: tuple[str, ...] = (
    "metadata.google.internal",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
)

#: Traffic to these never leaves the sandbox; nft uses ``fib daddr type
#: local``, which also covers the sandbox's interface addresses.
LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


# Decision sources, in evaluation order (see module docstring).
SOURCE_LOCAL = "local"
SOURCE_OFFLINE = "offline"
SOURCE_RULE = "rule"
SOURCE_DNS = "dns"
SOURCE_METADATA = "block-metadata"
SOURCE_PRIVATE = "block-private"
SOURCE_DEFAULT = "default"
SOURCE_PUBLISH = "publish"  # an inbound flow through --publish


@attrs.frozen(kw_only=True)
class Decision:
    """What the policy does with a new flow, and why (for a flow log)."""

    verdict: Action
    source: str  # one of the SOURCE_* constants
    rule: Optional[Rule] = None

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    def __str__(self) -> str:
        if self.rule is not None:
            why = self.rule.describe()
        elif self.source == SOURCE_DEFAULT:
            why = "default policy"
        elif self.source in (SOURCE_OFFLINE, SOURCE_METADATA, SOURCE_PRIVATE):
            why = f"--{self.source}"
        elif self.source == SOURCE_DNS:
            why = "the sandbox's DNS resolver"
        elif self.source == SOURCE_PUBLISH:
            why = "--publish"
        else:
            why = "the sandbox's own address"
        return f"{self.verdict} ({why})"


@attrs.frozen(kw_only=True)
class Policy:
    """A complete, validated network policy.  Build it with ``build_policy``."""

    deny_rules: tuple[Rule, ...] = ()
    allow_rules: tuple[Rule, ...] = ()
    default: Action = "allow"
    default_inferred: bool = True  # True when no --default-policy was given
    offline: bool = False
    block_private: bool = False
    block_metadata: bool = False
    # Collapsed, per run: the private presets plus the host's addresses.
    private_networks: tuple[IPNetwork, ...] = ()
    metadata_networks: tuple[IPNetwork, ...] = ()
    # The sandbox's resolver(s): port 53 to them passes presets and the
    # default, so hostname rules keep working (not under --offline).
    dns_servers: tuple[IPAddress, ...] = ()
    # Under --dns every DNS flow is answered by the forced resolver, whatever
    # address it names (netwrap.dns.intercept): port 53 to any address counts
    # as port 53 to the resolver.
    dns_anywhere: bool = False

    def with_network(
        self,
        *,
        host_addresses: Iterable[Union[str, IPAddress, IPNetwork]] = (),
        dns_servers: Iterable[Union[str, IPAddress]] = (),
        dns_anywhere: bool = False,
    ) -> "Policy":
        """This policy once the backend is up: ``host_addresses`` join the
        --block-private set and ``dns_servers`` are the sandbox's resolvers
        (as in ``build_policy``), without parsing the specs again."""
        return attrs.evolve(
            self,
            private_networks=collapse((*self.private_networks, *(_as_network(a) for a in host_addresses))),
            dns_servers=tuple(dict.fromkeys(normalize_address(a) for a in dns_servers)),
            dns_anywhere=dns_anywhere,
        )

    @property
    def hostnames(self) -> tuple[str, ...]:
        """Distinct names in --allow rules, in order of first appearance."""
        return tuple(dict.fromkeys(r.hostname for r in self.allow_rules if r.hostname))

    @property
    def is_trivial(self) -> bool:
        """True when the policy allows everything (nothing to install)."""
        return not (
            self.offline
            or self.deny_rules
            or self.block_private
            or self.block_metadata
            or self.default == "deny"
        )

    @property
    def metadata_hostnames(self) -> tuple[str, ...]:
        return METADATA_HOSTNAMES if self.block_metadata else ()

    def is_metadata_address(self, address: Union[str, IPAddress]) -> bool:
        """True if a DNS answer with this address must be refused."""
        addr = normalize_address(address)
        return self.block_metadata and any(addr in n for n in self.metadata_networks)

    def decide(
        self,
        proto: str,
        dst_ip: Union[str, IPAddress],
        dst_port: Optional[int] = None,
        *,
        resolved_names: Optional[Mapping[str, Iterable[Union[str, IPAddress]]]] = None,
    ) -> Decision:
        """Verdict for a new outbound flow; mirrors the nftables chain.

        ``proto`` is tcp, udp or icmp (icmpv6 counts as icmp); ``dst_port``
        is required for tcp/udp.  ``resolved_names`` maps allowed hostnames
        to the addresses the sandbox's DNS answered for them.
        """
        proto = "icmp" if proto in ("icmpv6", "ipv6-icmp") else proto
        if proto not in SCHEMES:
            raise ValueError(f"unknown protocol {proto!r}")
        if proto != "icmp" and dst_port is None:
            raise ValueError(f"{proto} needs a destination port")
        port = None if proto == "icmp" else dst_port
        addr = normalize_address(dst_ip)
        resolved = _normalize_resolved(resolved_names or {})

        if any(addr in n for n in LOOPBACK_NETWORKS):
            return Decision(verdict="allow", source=SOURCE_LOCAL)
        if self.offline:
            return Decision(verdict="deny", source=SOURCE_OFFLINE)
        for rule in self.deny_rules:
            if rule.matches(proto, addr, port, resolved):
                return Decision(verdict="deny", source=SOURCE_RULE, rule=rule)
        if proto in ("tcp", "udp") and port == 53 and (self.dns_anywhere or addr in self.dns_servers):
            return Decision(verdict="allow", source=SOURCE_DNS)
        if self.block_metadata and any(addr in n for n in self.metadata_networks):
            return Decision(verdict="deny", source=SOURCE_METADATA)
        if self.block_private and any(addr in n for n in self.private_networks):
            return Decision(verdict="deny", source=SOURCE_PRIVATE)
        for rule in self.allow_rules:
            if rule.matches(proto, addr, port, resolved):
                return Decision(verdict="allow", source=SOURCE_RULE, rule=rule)
        return Decision(verdict=self.default, source=SOURCE_DEFAULT)


# --- Building a policy ----------------------------------------------------


def build_policy(
    *,
    allow: Iterable[str] = (),
    deny: Iterable[str] = (),
    default_policy: Optional[str] = None,
    offline: bool = False,
    block_private: bool = False,
    block_metadata: bool = False,
    host_addresses: Iterable[Union[str, IPAddress, IPNetwork]] = (),
    dns_servers: Iterable[Union[str, IPAddress]] = (),
) -> Policy:
    """Parse every spec and combine the flags; UsageError on bad input.

    ``host_addresses`` (backend-supplied: addresses through which the
    backend reaches the host) join the --block-private set.  ``dns_servers``
    are the sandbox's resolvers.  Both come from code, not the user, so a
    bad value there is a ValueError.
    """
    allow_rules = tuple(parse_rule(s, action="allow") for s in allow)
    deny_rules = tuple(parse_rule(s, action="deny") for s in deny)
    if default_policy is not None and default_policy not in ("allow", "deny"):
        raise UsageError(
            f"invalid --default-policy {default_policy!r}: expected 'allow' or 'deny'"
        )
    if offline and allow_rules:
        raise UsageError(
            f"--offline cannot be combined with --allow {allow_rules[0].spec!r}: "
            "offline allows nothing but the sandbox's own loopback"
        )
    if offline and default_policy == "allow":
        raise UsageError("--offline cannot be combined with --default-policy allow")
    if default_policy is None:
        # An allow-list only makes sense if what it does not list is denied.
        default: Action = "deny" if (allow_rules or offline) else "allow"
    else:
        default = "deny" if default_policy == "deny" else "allow"
    private = PRIVATE_NETWORKS + tuple(
        _as_network(a) for a in host_addresses
    )
    return Policy(
        deny_rules=deny_rules,
        allow_rules=allow_rules,
        default=default,
        default_inferred=default_policy is None,
        offline=offline,
        block_private=block_private,
        block_metadata=block_metadata,
        private_networks=collapse(private),
        metadata_networks=collapse(METADATA_NETWORKS),
        dns_servers=tuple(dict.fromkeys(normalize_address(a) for a in dns_servers)),
    )


def collapse(networks: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    """Merge overlaps, v4 first then v6 (nft interval sets reject overlaps)."""
    nets = list(networks)
    v4 = ipaddress.collapse_addresses(n for n in nets if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in nets if n.version == 6)
    return (*v4, *v6)


def normalize_address(address: Union[str, IPAddress]) -> IPAddress:
    """An address as the kernel filters it: v4-mapped IPv6 becomes IPv4."""
    addr = address if not isinstance(address, str) else ipaddress.ip_address(address)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise ValueError(f"address with a zone index: {address!r}")
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
    return addr


def _as_network(value: Union[str, IPAddress, IPNetwork]) -> IPNetwork:
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if isinstance(value, str) and "/" in value:
        return ipaddress.ip_network(value)
    return ipaddress.ip_network(normalize_address(value))


def _normalize_resolved(
    resolved: Mapping[str, Iterable[Union[str, IPAddress]]],
) -> dict[str, frozenset[IPAddress]]:
    return {
        normalize_hostname_key(name): frozenset(normalize_address(a) for a in addrs)
        for name, addrs in resolved.items()
    }

