"""The --allow/--deny spec grammar: one string in, a Rule or a UsageError out.

Pure code; :mod:`netwrap.policy.model` builds policies from these rules and
re-exports everything public here.

Grammar of one spec (``--allow SPEC`` / ``--deny SPEC``)::

    spec    := [scheme "://"] target [":" ports]  |  [scheme "://"] ":" ports
    scheme  := "tcp" (default) | "udp" | "icmp" (takes no ports)
    target  := "*" | IPv4 | IPv4/len | IPv6 | IPv6/len | "[" IPv6 ["/" len] "]"
             | hostname (--allow only)
    ports   := "*" | item ("," item)*        item := N | N "-" M,  1 <= N <= M <= 65535

A bare IPv6 address has no port, so "2001:db8::1:443" is an address;
brackets are needed when a port follows.  IPv4-mapped IPv6 targets become
IPv4, because that is how the kernel sends (and nftables sees) them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Literal, Optional, Union

import attrs

from netwrap.errors import UsageError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Action = Literal["allow", "deny"]
Proto = Literal["tcp", "udp", "icmp"]

SCHEMES: tuple[Proto, ...] = ("tcp", "udp", "icmp")
MAX_SPEC_LENGTH = 1024


# --- Values ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class PortRange:
    """Inclusive port range; a single port has ``first == last``."""

    first: int
    last: int

    def __contains__(self, port: int) -> bool:
        return self.first <= port <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@attrs.frozen(kw_only=True)
class Rule:
    """One parsed --allow/--deny spec.

    Exactly one of ``network``/``hostname`` is set, or neither for "any
    host".  ``ports`` is None for any port (always None for icmp), else
    sorted, merged ranges.  ``spec`` is the text as the user wrote it.
    """

    action: Action
    proto: Proto
    network: Optional[IPNetwork] = None
    hostname: Optional[str] = None
    ports: Optional[tuple[PortRange, ...]] = None
    spec: str = ""

    def matches(
        self,
        proto: str,
        address: IPAddress,
        port: Optional[int],
        resolved: Mapping[str, frozenset[IPAddress]],
    ) -> bool:
        if proto != self.proto:
            return False
        if self.network is not None and address not in self.network:
            return False
        if self.hostname is not None and address not in resolved.get(self.hostname, ()):
            return False
        if self.ports is not None:
            return port is not None and any(port in r for r in self.ports)
        return True

    def describe(self) -> str:
        return f"--{self.action} {self.spec!r}"


def normalize_hostname_key(name: str) -> str:
    """How names are compared: lower case, no trailing dot."""
    return name.lower().rstrip(".")


# --- Parsing one spec -----------------------------------------------------


class _SpecError(Exception):
    """What is wrong with a spec; parse_rule adds the spec and flag."""


_DIGITS = re.compile(r"[0-9]+")
_DOTTED_DIGITS = re.compile(r"(?=.*[0-9])[0-9.]+")  # IPv4-shaped: digits and dots
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_SCHEME_TYPO = re.compile(r"[A-Za-z][A-Za-z0-9+-]*:/")


def parse_rule(spec: str, *, action: Action) -> Rule:
    """Parse one --allow/--deny spec, or raise UsageError saying what is wrong."""
    if action not in ("allow", "deny"):
        raise ValueError(f"action must be 'allow' or 'deny', not {action!r}")
    if not isinstance(spec, str):
        raise UsageError(f"invalid --{action} spec {spec!r}: expected a string")
    try:
        return _parse(spec, action)
    except _SpecError as e:
        raise UsageError(f"invalid --{action} spec {_quote(spec)}: {e}") from None


def _quote(spec: str) -> str:
    # repr() keeps the message on one line whatever the spec contains.
    if len(spec) > 200:
        return repr(spec[:200]) + "..."
    return repr(spec)


def _parse(spec: str, action: Action) -> Rule:
    if spec == "":
        raise _SpecError("empty rule")
    if len(spec) > MAX_SPEC_LENGTH:
        raise _SpecError(f"too long ({len(spec)} characters, at most {MAX_SPEC_LENGTH})")
    for ch in spec:
        if ch.isspace():
            raise _SpecError("contains whitespace")
        if not ch.isprintable():
            raise _SpecError(f"contains the control character {ch!r}")

    proto, rest = _split_scheme(spec)
    if rest == "":
        raise _SpecError(f"missing target after '{proto}://'")
    target, ports_text = _split_ports(rest)

    network: Optional[IPNetwork] = None
    hostname: Optional[str] = None
    if target == "" and ports_text is None:
        raise _SpecError("missing target")
    if target in ("", "*"):
        pass  # any host; ":443" means any host on port 443
    elif target.startswith("["):
        network = _parse_bracketed(target)
    else:
        network, hostname = _parse_target(target, ports_text, scheme_given="://" in spec)

    ports: Optional[tuple[PortRange, ...]] = None
    if ports_text is not None:
        if proto == "icmp":
            raise _SpecError("icmp rules take no port")
        ports = _parse_ports(ports_text)
    if hostname is not None and action == "deny":
        raise _SpecError(
            f"hostname {hostname!r} in --deny: a name's addresses change, so only "
            "--allow takes hostnames; deny an IP address or CIDR instead"
        )
    return Rule(
        action=action, proto=proto, network=network, hostname=hostname, ports=ports, spec=spec
    )


def _split_scheme(spec: str) -> tuple[Proto, str]:
    if "://" not in spec:
        if _SCHEME_TYPO.match(spec):
            raise _SpecError("malformed scheme (expected tcp://, udp:// or icmp://)")
        return "tcp", spec
    scheme, rest = spec.split("://", 1)
    if "://" in rest:
        raise _SpecError("more than one '://'")
    if scheme == "":
        raise _SpecError("missing scheme before '://'")
    lowered = scheme.lower()
    for known in SCHEMES:
        if lowered == known:
            return known, rest
    raise _SpecError(f"unknown scheme {scheme!r} (expected tcp://, udp:// or icmp://)")


def _split_ports(rest: str) -> tuple[str, Optional[str]]:
    """Split target from ports; ports is None when no ':' introduces them."""
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise _SpecError("unclosed '[' (expected [IPv6] or [IPv6/len])")
        target, after = rest[: close + 1], rest[close + 1 :]
        if after == "":
            return target, None
        if not after.startswith(":"):
            raise _SpecError(f"unexpected {after!r} after ']' (expected ':' and ports)")
        return target, after[1:]
    if "[" in rest:
        raise _SpecError("'[' must start the target")
    if "]" in rest:
        raise _SpecError("']' without a matching '['")
    colons = rest.count(":")
    if colons == 0:
        return rest, None
    if colons == 1:
        target, ports = rest.split(":", 1)
        return target, ports
    # Two or more colons: a bare IPv6 address or network, never with ports.
    return rest, None


def _parse_bracketed(target: str) -> IPNetwork:
    inner = target[1:-1]
    if inner == "":
        raise _SpecError("empty brackets")
    network = _parse_ip_or_cidr(inner)
    if network is None:
        raise _SpecError(f"{inner!r} in brackets is not an IPv6 address")
    if network.version != 6 and ":" not in inner:
        raise _SpecError("brackets are only for IPv6 addresses; write IPv4 without them")
    return network


def _parse_target(
    target: str, ports_text: Optional[str], *, scheme_given: bool
) -> tuple[Optional[IPNetwork], Optional[str]]:
    if "*" in target:
        if ":" in target:  # "2001:db8::1:*": an unbracketed IPv6 with ports
            raise _SpecError(_bad_ipv6_message(target))
        if target.startswith("*."):
            raise _SpecError("wildcard hostnames are not supported; allow each name")
        raise _SpecError("'*' must stand alone as the target")
    if not target.isascii():
        raise _SpecError(_non_ascii_message(target))
    network = _parse_ip_or_cidr(target)
    if network is not None:
        return network, None
    if ":" in target:  # bare IPv6 that did not parse
        raise _SpecError(_bad_ipv6_message(target))
    if not scheme_given and ports_text is not None and target.lower() in SCHEMES:
        raise _SpecError(
            f"{target!r} looks like a scheme without '//' "
            f"(write '{target.lower()}://HOST:{ports_text}' or '{target.lower()}://:{ports_text}')"
        )
    return None, _parse_hostname(target)


def _parse_ip_or_cidr(text: str) -> Optional[IPNetwork]:
    """An IP or CIDR; None if ``text`` is not IP-shaped (maybe a hostname)."""
    if "%" in text:
        raise _SpecError("IPv6 zone indexes ('%...') are not supported")
    addr_text, slash, prefix_text = text.partition("/")
    if "/" in prefix_text:
        raise _SpecError("more than one '/'")
    ip_shaped = ":" in addr_text or bool(_DOTTED_DIGITS.fullmatch(addr_text))
    if not ip_shaped:
        if slash and addr_text == "":
            raise _SpecError("missing address before '/'")
        if slash:
            raise _SpecError(f"{addr_text!r} before '/' is not an IP address")
        return None
    try:
        addr = ipaddress.ip_address(addr_text)
    except ValueError:
        if ":" in addr_text:
            raise _SpecError(_bad_ipv6_message(text)) from None
        raise _SpecError(f"invalid IPv4 address {addr_text!r}") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        # The kernel sends these as IPv4 packets, so filter them as IPv4.
        mapped = addr.ipv4_mapped
        if not slash:
            return ipaddress.ip_network(mapped)
        length = _prefix_length(prefix_text, 128)
        if length < 96:
            raise _SpecError("IPv4-mapped networks need a prefix length of 96 or more")
        return _network(mapped, length - 96, text)
    if not slash:
        return ipaddress.ip_network(addr)
    return _network(addr, _prefix_length(prefix_text, addr.max_prefixlen), text)


def _prefix_length(text: str, maximum: int) -> int:
    if text == "":
        raise _SpecError("missing prefix length after '/'")
    if not _DIGITS.fullmatch(text):
        hint = ""
        if ":" in text:
            hint = "; put an IPv6 network in brackets when a port follows, e.g. [2001:db8::/32]:443"
        raise _SpecError(f"bad prefix length {text!r} (expected a number){hint}")
    if len(text) > 3 or int(text) > maximum:
        family = "IPv4" if maximum == 32 else "IPv6"
        raise _SpecError(f"prefix length /{text} is out of range for {family} (0-{maximum})")
    return int(text)


def _network(addr: IPAddress, length: int, text: str) -> IPNetwork:
    network = ipaddress.ip_network((addr, length), strict=False)
    if network.network_address != addr:
        raise _SpecError(f"host bits set in {text!r} (did you mean {str(network)!r}?)")
    return network


def _bad_ipv6_message(text: str) -> str:
    head, _, tail = text.rpartition(":")
    if head and (tail == "*" or _DIGITS.fullmatch(tail.replace(",", "").replace("-", ""))):
        try:
            ipaddress.ip_network(head, strict=False)
        except ValueError:
            pass
        else:
            return (
                f"invalid IPv6 address {text!r}; an IPv6 address with a port "
                f"must be in brackets, e.g. [{head}]:{tail}"
            )
    return f"invalid IPv6 address {text!r}"


def _non_ascii_message(target: str) -> str:
    message = "non-ASCII hostname; write it in its IDNA form"
    try:
        ascii_form = target.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return message + " ('xn--...')"
    return message + f" ({ascii_form!r})"


def _parse_hostname(name: str) -> str:
    if _DOTTED_DIGITS.fullmatch(name):
        raise _SpecError(f"invalid IPv4 address {name!r}")
    bare = name[:-1] if name.endswith(".") else name
    if bare == "":
        raise _SpecError("empty hostname")
    if len(bare) > 253:
        raise _SpecError(f"hostname is {len(bare)} characters long (at most 253)")
    labels = bare.lower().split(".")
    for label in labels:
        if label == "":
            raise _SpecError(f"empty label in hostname {name!r}")
        if len(label) > 63:
            raise _SpecError(f"hostname label {label[:20]!r}... is longer than 63 characters")
        if not _LABEL.fullmatch(label):
            bad = next((c for c in label if not (c.isalnum() or c == "-")), None)
            if bad is not None:
                raise _SpecError(
                    f"invalid character {bad!r} in hostname "
                    "(letters, digits, '-' and '.' only)"
                )
            raise _SpecError(f"hostname label {label!r} starts or ends with '-'")
    if labels[-1].isdigit():
        raise _SpecError(f"{name!r} is neither an IP address nor a hostname (numeric last label)")
    return ".".join(labels)


def _merge_ports(ranges: list[PortRange]) -> tuple[PortRange, ...]:
    # Sorted and merged, so nft anonymous interval sets never see overlaps.
    merged: list[PortRange] = []
    for r in sorted(ranges, key=lambda r: (r.first, r.last)):
        if merged and r.first <= merged[-1].last + 1:
            last = merged[-1]
            merged[-1] = PortRange(first=last.first, last=max(last.last, r.last))
        else:
            merged.append(r)
    return tuple(merged)


def _parse_ports(text: str) -> Optional[tuple[PortRange, ...]]:
    if text == "":
        raise _SpecError("empty port list after ':'")
    if text == "*":
        return None
    ranges = []
    for item in text.split(","):
        if item == "":
            raise _SpecError("empty item in port list")
        if item == "*" or "*" in item:
            raise _SpecError("'*' cannot be combined with other ports")
        first_text, dash, last_text = item.partition("-")
        first = _port(first_text, item)
        last = _port(last_text, item) if dash else first
        if last < first:
            raise _SpecError(f"port range {item!r} is reversed (write {last}-{first})")
        ranges.append(PortRange(first=first, last=last))
    return _merge_ports(ranges)


def _port(text: str, item: str) -> int:
    if text == "":
        raise _SpecError(f"incomplete port range {item!r}")
    if not _DIGITS.fullmatch(text):
        raise _SpecError(f"invalid port {text!r} (expected a number 1-65535)")
    # Length check first: int() of a huge digit string is slow or refused.
    if len(text) > 5 or not 1 <= int(text) <= 65535:
        raise _SpecError(f"port {text} is out of range (1-65535)")
    return int(text)
