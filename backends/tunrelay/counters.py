"""Drop reasons and the counters the relay keeps per reason.

Every packet the relay does not pass on is counted under one short,
stable reason string (they end up in ``netwrap --doctor``-style output and
in the pcapng interface statistics), so the names are constants here rather
than literals scattered over the parsers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Drop", "Counters", "R"]


@dataclass(frozen=True, slots=True)
class Drop:
    """Result of a parse or rewrite that refuses the packet."""

    reason: str

    def __bool__(self) -> bool:  # "if result:" reads as "if usable"
        return False


class R:
    """Reason names (a namespace of str constants, not an Enum: cheaper as
    dict keys and printable as they are)."""

    # framing and IP
    TRUNCATED = "truncated"
    BAD_VNET = "bad_vnet"
    BAD_VERSION = "bad_version"
    BAD_HEADER = "bad_header"
    BAD_LENGTH = "bad_length"
    FRAGMENT = "fragment"
    BAD_EXT = "bad_ext_header"
    TOO_MANY_EXT = "too_many_ext_headers"
    ROUTING_HEADER = "routing_header"
    NO_NEXT_HEADER = "no_next_header"
    UNSUPPORTED_PROTO = "unsupported_proto"
    BAD_PORT = "bad_port"
    BAD_ADDRESS = "bad_address"
    MALFORMED = "malformed"  # safety net: a parser bug, never expected
    # ICMP
    ICMP_IGNORED = "icmp_ignored"
    ICMP_ERROR_FROM_CHILD = "icmp_error_from_child"
    # TCP NAT
    TCP_NO_FLOW = "tcp_no_flow"
    TCP_PENDING = "tcp_pending"
    TCP_FLOW_LIMIT = "tcp_flow_limit"
    TCP_PENDING_LIMIT = "tcp_pending_limit"
    HELD_BYTES_LIMIT = "held_bytes_limit"
    NO_LISTENER = "no_listener"
    NO_POOL = "no_fake_pool"
    # flows
    FLOW_LIMIT = "flow_limit"
    TOO_BIG = "too_big"
    # policy
    POLICY_DROP = "policy_drop"
    POLICY_REJECT = "policy_reject"


class Counters:
    """Counts per reason.  Plain dict underneath: one increment is a dict
    get/set, cheap enough for the per-packet path."""

    __slots__ = ("_c",)

    def __init__(self) -> None:
        self._c: dict[str, int] = {}

    def add(self, reason: str, n: int = 1) -> None:
        c = self._c
        c[reason] = c.get(reason, 0) + n

    def drop(self, d: Drop) -> None:
        c = self._c
        r = d.reason
        c[r] = c.get(r, 0) + 1

    def __getitem__(self, reason: str) -> int:
        return self._c.get(reason, 0)

    def total(self) -> int:
        return sum(self._c.values())

    def snapshot(self) -> dict[str, int]:
        """A copy, sorted by reason, for reporting."""
        return dict(sorted(self._c.items()))

    def __repr__(self) -> str:
        return f"Counters({self.snapshot()!r})"
