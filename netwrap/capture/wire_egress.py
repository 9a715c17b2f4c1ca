"""The wire-egress view: the host's real packets, kept only for the backend's flows.

A packet socket on every host interface sees all of the host's traffic; the
question is which flows the backend opened for the command. The backend's
host-side ports are its own, so a flow is recognised by what the child view
predicts: when the command opens a flow (TCP SYN, a first UDP datagram, an
ICMP echo request), the egress synthesiser says which host address, peer and
port the backend will use (`expect`). The first host flow that opens to that
(protocol, host address, peer, peer port) within WINDOW after the child's
packet is taken as the backend's, and from then on both directions of it are
kept. Host packets that arrive before their child packet was read wait in a
short pending list.

Limit, said plainly: a flow that another process on the host opens to the
same peer and port in that same instant could be taken instead of the
backend's (the backend's own sockets are not visible to a rootless netwrap).
"""

from __future__ import annotations

import collections
from typing import NamedTuple

from netwrap.capture import fields as packet_fields
from netwrap.capture.fields import Fields

WINDOW_NS = 1_000_000_000
# The host packet can be stamped a hair before the child packet is (two sockets).
SLACK_NS = 1_000_000
MAX_PENDING = 4096
MAX_FLOWS = 65536


class HostPacket(NamedTuple):
    ts_ns: int
    ifindex: int
    hatype: int
    frame: bytes
    orig_len: int


def _expect_key(f: Fields) -> tuple:
    if f.proto in (packet_fields.TCP, packet_fields.UDP):
        return (f.proto, f.src, f.dst, f.dport)
    return (f.proto, f.src, f.dst)


def flow_key(f: Fields) -> tuple:
    """The same key for both directions of a flow."""
    if f.proto in (packet_fields.TCP, packet_fields.UDP):
        a, b = (f.src, f.sport), (f.dst, f.dport)
        return (f.proto, *min(a, b), *max(a, b))
    return (f.proto, min(f.src, f.dst), max(f.src, f.dst), f.sport)  # echo identifier


class WireMatcher:
    def __init__(self) -> None:
        self._expected: dict[tuple, collections.deque[int]] = {}
        self._flows: dict[tuple, None] = {}  # insertion-ordered: the oldest go first
        self._pending: collections.deque[tuple[HostPacket, Fields, tuple]] = collections.deque()
        self.unmatched = 0  # host packets of other flows, seen and let go

    def expect(self, ts_ns: int, f: Fields) -> list[HostPacket]:
        """A host-side flow opener the backend will send; returns pending packets now matched."""
        key = _expect_key(f)
        self._expected.setdefault(key, collections.deque()).append(ts_ns)
        if len(self._expected) > MAX_FLOWS:
            self._expected.pop(next(iter(self._expected)))
        return self._match_pending()

    def offer(self, pkt: HostPacket, f: Fields) -> list[HostPacket]:
        """One host packet; returns the packets to keep now (this one, or none yet)."""
        key = flow_key(f)
        if key in self._flows:
            return [pkt]
        if packet_fields.is_flow_opener(f) and self._claim(pkt.ts_ns, f, key):
            return [pkt]
        self._pending.append((pkt, f, key))
        self._expire(pkt.ts_ns)
        return []

    def _claim(self, ts_ns: int, f: Fields, key: tuple) -> bool:
        waiting = self._expected.get(_expect_key(f))
        while waiting and ts_ns - waiting[0] > WINDOW_NS:
            waiting.popleft()  # a child flow whose host side never showed
        if not waiting or waiting[0] - ts_ns > SLACK_NS:
            return False
        waiting.popleft()
        self._flows[key] = None
        if len(self._flows) > MAX_FLOWS:
            self._flows.pop(next(iter(self._flows)))
        return True

    def _match_pending(self) -> list[HostPacket]:
        keep: list[HostPacket] = []
        rest: collections.deque = collections.deque()
        for pkt, f, key in self._pending:
            if key in self._flows or (packet_fields.is_flow_opener(f) and self._claim(pkt.ts_ns, f, key)):
                keep.append(pkt)
            else:
                rest.append((pkt, f, key))
        self._pending = rest
        return keep

    def _expire(self, now_ns: int) -> None:
        pending = self._pending
        while pending and (len(pending) > MAX_PENDING or now_ns - pending[0][0].ts_ns > WINDOW_NS):
            pending.popleft()
            self.unmatched += 1

    def flush(self) -> None:
        """At the end: whatever still waits was not the backend's."""
        self.unmatched += len(self._pending)
        self._pending.clear()
