"""Render a :class:`netwrap.policy.model.Policy` as nftables text for the child netns.

Pure: a Policy (and optionally the first DNS answers for its hostnames) in,
``nft -f`` input out.  The I/O layer installs it before the command starts
and later feeds new DNS answers in with :func:`render_name_update`.

Layout (names are API for the I/O layer)::

    table inet netwrap_policy
      set deny_<i>_v4 | deny_<i>_v6     address of the i-th --deny (1-based), interval
      set allow_<i>_v4 | allow_<i>_v6   address of the i-th --allow with an IP/CIDR
      set name_<k>_v4 + name_<k>_v6     addresses of the k-th distinct --allow hostname
                                        (Policy.hostnames order), filled at run time
      set dns_v4/_v6, metadata_v4/_v6, private_v4/_v6     presets, interval
      chain output    filter hook output, priority filter
      chain refuse    the one place that says how a flow is refused
      chain published filter hook input (flow log and --publish only): tags inbound published flows

Only the command's own, locally generated traffic is filtered, so there is
no forward or input chain.  Chain order is the order of Policy.decide:
the sandbox's own addresses, (--offline: refuse all else), established and
related packets (replies to allowed flows and to published ports), IPv6
neighbour discovery and multicast listener reports (the kernel's own upkeep
of the link: without the first no IPv6 works at all, and fe80::/10 is a
private range; the second only announces multicast groups), --deny rules, the resolver on port 53, --block-metadata,
--block-private, --allow rules, the default.

Why ``fib daddr type local`` and not ``oif "lo"``: tunrelay's fast path
marks outbound TCP and reroutes it to lo for TPROXY before this chain
runs, so an oif test would wave every TCP flow through.  The destination
address is unchanged by that reroute, and fib's ``type`` looks only at
the local table, so it still says "remote".  The DNS path
(netwrap.dns.intercept) reroutes DNS the same way.

Published ports (``published``, from --publish) are an explicit opening:
their inbound connections arrive from outside and are never judged here (no
input chain judges), and their replies leave through ``ct state established``,
before any rule.  --offline has no such line, so there the replies of flows
whose original destination is a published port are accepted by name (``ct
direction reply`` plus ``ct original proto-dst``): a flow the command opens
itself is in the original direction and stays refused.  With the flow log, an
input chain tags new inbound flows to those ports (TAG_PUBLISHED), so they are
logged as inbound.

Refusals fail fast, never time out:
- TCP: ``reject with tcp reset``: connect() gets ECONNREFUSED at once.
- UDP: ``reject with icmpx port-unreachable``: the send itself fails with
  EPERM (the packet is dropped on the local output path) and a connected
  socket then reads ECONNREFUSED, which stub resolvers and QUIC stacks
  take as final.  admin-prohibited would surface as EHOSTUNREACH/EACCES,
  which some clients retry.
- everything else (ICMP echo, ...): ``reject with icmpx admin-prohibited``.

Flow log tags (``flow_log_group``): every rule that decides gets a small
number (:func:`verdict_tags` says which rule or preset it stands for).
Allowing rules set it as the flow's conntrack mark, which conntrack events
carry; refusing rules log the packet to that NFLOG group with the prefix
``nw:<tag> `` (a refused flow never becomes a conntrack entry).  Without
the argument the output is exactly the plain policy.

DNS: the preset allows port 53 to the sandbox's resolvers (under --dns, to
any address: every DNS flow then goes to the forced resolver).  netwrap's DNS
proxy takes DNS flows over by TPROXY in a table of its own
(netwrap.dns.intercept) without rewriting their destination, so this chain
judges the address the command asked for, and a refused query never reaches
the proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Optional, Union

import attrs

from netwrap.policy.model import (
    SOURCE_DEFAULT,
    SOURCE_DNS,
    SOURCE_METADATA,
    SOURCE_OFFLINE,
    SOURCE_PRIVATE,
    SOURCE_PUBLISH,
    SOURCE_RULE,
    Decision,
    IPAddress,
    IPNetwork,
    Policy,
    Rule,
    collapse,
    normalize_address,
    normalize_hostname_key,
)

TABLE_FAMILY = "inet"
TABLE_NAME = "netwrap_policy"
TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"
OUTPUT_CHAIN = "output"
REFUSE_CHAIN = "refuse"

LOG_PREFIX = "nw:"

# How long an address a DNS answer gave for an allowed hostname stays in its
# set: the answer's TTL, but at least LEARNED_TTL_FLOOR (a command, or its
# resolver library, often keeps an answer a little past its TTL, and TTLs of
# 0-5 s would have an address gone before the connect that looked it up)
# and at most LEARNED_TTL_CAP (resolvers cap TTLs at a day or a week; a day
# bounds how long a stale address stays open). Connections already open are
# not affected: the output chain accepts established and related flows before
# any set is consulted.
LEARNED_TTL_FLOOR = 60
LEARNED_TTL_CAP = 86400
# Elements one hostname set holds at most (per family): a bound on what
# answers can make the kernel keep. An addition beyond it fails and is
# reported; the addresses already there stay until they expire.
NAME_SET_SIZE = 4096

# Flow-log tags of the presets; rule tags start at RULE_TAG_BASE.
TAG_DNS = 1
TAG_OFFLINE = 2
TAG_METADATA = 3
TAG_PRIVATE = 4
TAG_DEFAULT = 5
TAG_PUBLISHED = 6
PUBLISHED_CHAIN = "published"
RULE_TAG_BASE = 16

_REFUSE = f"jump {REFUSE_CHAIN}"
_NDP_TYPES = ("{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, "
              "mld-listener-report, mld-listener-done, mld2-listener-report }")
_COMMENT_MAX = 120  # nft caps comments at 128 bytes


@attrs.frozen(kw_only=True)
class NameSets:
    """The two sets that hold one allowed hostname's addresses."""

    hostname: str
    v4: str
    v6: str


@attrs.frozen
class _Line:
    """One deciding rule of the output chain, before tags are applied."""

    match: str  # ends with a space, or is empty
    refuse: bool
    tag: int
    comment: str


def verdict_tags(policy: Policy) -> dict[int, Decision]:
    """Flow-log tag -> the decision it stands for (see the module docstring)."""
    tags = {
        TAG_DNS: Decision(verdict="allow", source=SOURCE_DNS),
        TAG_OFFLINE: Decision(verdict="deny", source=SOURCE_OFFLINE),
        TAG_METADATA: Decision(verdict="deny", source=SOURCE_METADATA),
        TAG_PRIVATE: Decision(verdict="deny", source=SOURCE_PRIVATE),
        TAG_DEFAULT: Decision(verdict="deny" if policy.offline else policy.default, source=SOURCE_DEFAULT),
        TAG_PUBLISHED: Decision(verdict="allow", source=SOURCE_PUBLISH),
    }
    for i, rule in enumerate((*policy.deny_rules, *policy.allow_rules)):
        tags[RULE_TAG_BASE + i] = Decision(verdict=rule.action, source=SOURCE_RULE, rule=rule)
    return tags


def name_sets(policy: Policy) -> dict[str, NameSets]:
    """Hostname -> its set names; the I/O layer adds DNS answers to them."""
    return {
        name: NameSets(hostname=name, v4=f"name_{k}_v4", v6=f"name_{k}_v6")
        for k, name in enumerate(policy.hostnames, start=1)
    }


def learned_timeout(ttl: int) -> int:
    """Seconds an address learned from an answer with this TTL stays allowed."""
    return min(max(ttl, LEARNED_TTL_FLOOR), LEARNED_TTL_CAP)


def render_policy(
    policy: Policy,
    *,
    resolved_names: Optional[Mapping[str, Iterable[Union[str, IPAddress]]]] = None,
    flow_log_group: Optional[int] = None,
    dns_tcp: bool = True,
    published: Iterable[tuple[str, int]] = (),
) -> str:
    """The whole table as ``nft -f`` input.

    ``dns_tcp=False`` exempts only UDP DNS (--dns-allowed-only): the DNS
    proxy's name filter judges UDP queries; its TCP relay does not read the
    names it carries, so TCP DNS would go around the filter.

    ``published`` names the sandbox's published ports as (protocol, port).

    ``resolved_names`` (hostname -> addresses answered at start) pre-fills
    the hostname sets so the first connection does not race the I/O layer.
    ``flow_log_group`` tags every decision for the flow log (see the module
    docstring).
    """
    out = _Writer()
    out.line(0, "# netwrap network policy for the command's network namespace.")
    out.line(0, "# Generated by netwrap.policy.nft; set names are documented there.")
    out.line(0, f"table {TABLE} {{")
    ports = _published_ports(published)
    if policy.offline:
        _render_chains(out, policy, [], flow_log_group, published=ports)
        _render_published(out, ports, flow_log_group)
        out.line(0, "}")
        return out.text()

    deny_lines: list[_Line] = []
    tag = RULE_TAG_BASE
    for i, rule in enumerate(policy.deny_rules, start=1):
        deny_lines += _rule_lines(out, rule, f"deny_{i}", None, tag)
        tag += 1
    preset_lines = _preset_lines(out, policy, dns_tcp=dns_tcp)
    sets = name_sets(policy)
    resolved = _resolved_by_set(policy, resolved_names or {})
    for ns in sets.values():
        comment = _comment(ns.hostname)
        for set_name, addr_type in ((ns.v4, "ipv4_addr"), (ns.v6, "ipv6_addr")):
            # Addresses resolved at start have no TTL to go by: they stay for
            # the run; those the DNS proxy learns later carry a timeout.
            out.set(set_name, addr_type, interval=False, timeout=True, size=NAME_SET_SIZE,
                    elements=resolved.get(set_name, ()), comment=comment)
    allow_lines: list[_Line] = []
    for i, rule in enumerate(policy.allow_rules, start=1):
        allow_lines += _rule_lines(out, rule, f"allow_{i}", sets, tag)
        tag += 1
    _render_chains(out, policy, deny_lines + preset_lines + allow_lines, flow_log_group)
    _render_published(out, ports, flow_log_group)
    out.line(0, "}")
    return out.text()


def render_name_update(
    policy: Policy, hostname: str, addresses: Iterable[Union[str, IPAddress]],
    *, timeout: Optional[int] = None,
) -> str:
    """``nft -f`` input adding DNS answers for an allowed hostname.

    With ``timeout`` (seconds, see learned_timeout) the kernel removes each
    element that long after it was last added; adding it again restarts the
    timeout. Without it the element stays for the run.
    Returns "" when there is nothing to add.
    """
    key = normalize_hostname_key(hostname)
    sets = name_sets(policy)
    if key not in sets:
        raise KeyError(f"{hostname!r} is not a hostname in any --allow rule")
    ns = sets[key]
    by_set = _split_addresses(ns, addresses)
    suffix = f" timeout {timeout}s" if timeout is not None else ""
    return "".join(
        f"add element {TABLE} {set_name} {{ {', '.join(e + suffix for e in elems)} }}\n"
        for set_name, elems in by_set.items()
        if elems
    )


# --- Pieces ---------------------------------------------------------------


class _Writer:
    """Collects set declarations first and chains after, in a stable order."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def line(self, depth: int, text: str) -> None:
        self._lines.append("\t" * depth + text)

    def set(
        self,
        name: str,
        addr_type: str,
        *,
        interval: bool,
        elements: Iterable[str],
        comment: Optional[str] = None,
        timeout: bool = False,
        size: Optional[int] = None,
    ) -> None:
        elems = list(elements)
        self.line(1, f"set {name} {{")
        self.line(2, f"type {addr_type}")
        flags = [f for f, wanted in (("interval", interval), ("timeout", timeout)) if wanted]
        if flags:
            self.line(2, f"flags {', '.join(flags)}")
        if size is not None:
            self.line(2, f"size {size}")
        if elems:
            self.line(2, f"elements = {{ {', '.join(elems)} }}")
        if comment:
            self.line(2, f'comment "{comment}"')
        self.line(1, "}")
        self.line(0, "")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _verdict(line: _Line, log_group: Optional[int]) -> str:
    """The rule text: match, the tag when the flow log is on, verdict, comment."""
    if line.refuse:
        tag = f'log prefix "{LOG_PREFIX}{line.tag} " group {log_group} ' if log_group is not None else ""
        verdict = _REFUSE
    else:
        tag = f"ct mark set {line.tag} " if log_group is not None else ""
        verdict = "accept"
    return f'{line.match}{tag}{verdict} comment "{line.comment}"'


def _render_chains(out: _Writer, policy: Policy, rule_lines: list[_Line], log_group: Optional[int],
                   *, published: Optional[dict[str, str]] = None) -> None:
    deny_by_default = policy.offline or policy.default == "deny"
    out.line(1, f"chain {OUTPUT_CHAIN} {{")
    # Chain policy drop is a backstop; the last rule already refuses fast.
    chain_policy = "drop" if deny_by_default else "accept"
    out.line(2, f"type filter hook output priority filter; policy {chain_policy};")
    out.line(2, 'fib daddr type local accept comment "the sandbox itself"')
    if policy.offline:
        if log_group is not None:
            # Refused too, but the kernel's link upkeep is no flow of the command's.
            out.line(2, f'icmpv6 type {_NDP_TYPES} {_REFUSE} comment "IPv6 link upkeep"')
        for proto, ports in (published or {}).items():
            out.line(2, f'ct direction reply meta l4proto {proto} ct original proto-dst {ports} accept '
                        'comment "replies of --publish"')
        out.line(2, _verdict(_Line("", True, TAG_OFFLINE, "--offline"), log_group))
    else:
        out.line(2, "ct state established,related accept")
        out.line(2, f'icmpv6 type {_NDP_TYPES} accept comment "IPv6 neighbour discovery, multicast listeners"')
        for line in rule_lines:
            out.line(2, _verdict(line, log_group))
        if deny_by_default:
            out.line(2, _verdict(_Line("", True, TAG_DEFAULT, "default policy deny"), log_group))
        elif log_group is not None:
            out.line(2, _verdict(_Line("", False, TAG_DEFAULT, "default policy allow"), log_group))
    out.line(1, "}")
    out.line(0, "")
    out.line(1, f"chain {REFUSE_CHAIN} {{")
    out.line(2, "meta l4proto tcp reject with tcp reset")
    out.line(2, "meta l4proto udp reject with icmpx port-unreachable")
    out.line(2, "reject with icmpx admin-prohibited")
    out.line(1, "}")


def _published_ports(published: Iterable[tuple[str, int]]) -> dict[str, str]:
    """Protocol -> nft text of its published sandbox ports ("80" or "{ 53, 80 }")."""
    by_proto: dict[str, list[int]] = {}
    for proto, port in published:
        if port not in by_proto.setdefault(proto, []):
            by_proto[proto].append(port)
    return {proto: str(ports[0]) if len(ports) == 1 else "{ " + ", ".join(map(str, sorted(ports))) + " }"
            for proto, ports in sorted(by_proto.items())}


def _render_published(out: _Writer, ports: dict[str, str], log_group: Optional[int]) -> None:
    """Tag new inbound flows to published ports for the flow log (nothing is judged here)."""
    if log_group is None or not ports:
        return
    out.line(0, "")
    out.line(1, f"chain {PUBLISHED_CHAIN} {{")
    out.line(2, "type filter hook input priority filter; policy accept;")
    for proto, text in ports.items():
        out.line(2, f'iifname != "lo" ct state new {proto} dport {text} ct mark set {TAG_PUBLISHED} '
                    'comment "inbound through --publish"')
    out.line(1, "}")


def _preset_lines(out: _Writer, policy: Policy, *, dns_tcp: bool = True) -> list[_Line]:
    """Sets and rules for the resolver exemption, metadata and private.

    dns_tcp=False (--dns-allowed-only): only UDP DNS is exempt, the kind whose
    names the DNS proxy filters; TCP DNS then meets the rest of the policy."""
    lines: list[_Line] = []
    dns_match = "meta l4proto { tcp, udp } th dport 53 " if dns_tcp else "udp dport 53 "
    if policy.dns_anywhere:
        lines.append(_Line(dns_match, False, TAG_DNS, "DNS, answered by the forced resolver"))
    dns = () if policy.dns_anywhere else collapse(ipaddress.ip_network(a) for a in policy.dns_servers)
    for base, nets, wanted, match, refuse, tag, comment in (
        ("dns", dns, True, dns_match, False, TAG_DNS,
         "the sandbox's DNS resolver"),
        ("metadata", policy.metadata_networks, policy.block_metadata, "", True, TAG_METADATA,
         "--block-metadata"),
        ("private", policy.private_networks, policy.block_private, "", True, TAG_PRIVATE,
         "--block-private"),
    ):
        if not wanted:
            continue
        for version, family, addr_type in ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr")):
            elems = [_element(n) for n in nets if n.version == version]
            if not elems:
                continue
            set_name = f"{base}_v{version}"
            out.set(set_name, addr_type, interval=True, elements=elems)
            lines.append(_Line(f"{match}{family} daddr @{set_name} ", refuse, tag, comment))
    return lines


def _rule_lines(
    out: _Writer, rule: Rule, base: str, sets: Optional[dict[str, NameSets]], tag: int
) -> list[_Line]:
    """Declare the rule's set (if any) and return its chain line(s)."""
    comment = _comment(rule.describe().replace("'", ""))
    if rule.network is not None:
        v = rule.network.version
        set_name = f"{base}_v{v}"
        out.set(set_name, f"ipv{v}_addr", interval=True, elements=[_element(rule.network)])
        targets = [(v, f"{'ip' if v == 4 else 'ip6'} daddr @{set_name} ")]
    elif rule.hostname is not None:
        assert sets is not None  # hostnames are --allow only
        ns = sets[rule.hostname]
        targets = [(4, f"ip daddr @{ns.v4} "), (6, f"ip6 daddr @{ns.v6} ")]
    else:
        targets = [(None, "")]
    return [
        _Line(f"{addr}{_proto_match(rule, version)} ", rule.action == "deny", tag, comment)
        for version, addr in targets
    ]


def _proto_match(rule: Rule, version: Optional[int]) -> str:
    if rule.proto == "icmp":
        icmp = {4: "icmp", 6: "ipv6-icmp", None: "{ icmp, ipv6-icmp }"}[version]
        return f"meta l4proto {icmp}"
    if rule.ports is None:
        return f"meta l4proto {rule.proto}"
    ports = [str(p) for p in rule.ports]
    port_text = ports[0] if len(ports) == 1 else "{ " + ", ".join(ports) + " }"
    return f"{rule.proto} dport {port_text}"


def _element(network: IPNetwork) -> str:
    # A lone address reads better than /32 or /128, and nft takes both.
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)


def _comment(text: str) -> str:
    # Specs are validated, but a comment must never end the string early.
    safe = "".join(c for c in text if c.isascii() and c.isprintable() and c not in '"\\')
    return safe if len(safe) <= _COMMENT_MAX else safe[: _COMMENT_MAX - 3] + "..."


def _split_addresses(
    ns: NameSets, addresses: Iterable[Union[str, IPAddress]]
) -> dict[str, list[str]]:
    v4: dict[str, None] = {}
    v6: dict[str, None] = {}
    for a in addresses:
        addr = normalize_address(a)
        (v4 if addr.version == 4 else v6)[str(addr)] = None
    return {ns.v4: sorted(v4, key=ipaddress.ip_address), ns.v6: sorted(v6, key=ipaddress.ip_address)}


def _resolved_by_set(
    policy: Policy, resolved_names: Mapping[str, Iterable[Union[str, IPAddress]]]
) -> dict[str, list[str]]:
    sets = name_sets(policy)
    by_set: dict[str, list[str]] = {}
    for name, addresses in resolved_names.items():
        ns = sets.get(normalize_hostname_key(name))
        if ns is not None:  # answers for names no rule uses are irrelevant here
            by_set.update(_split_addresses(ns, addresses))
    return by_set
