"""The flow log's bookkeeping: conntrack events and refused packets in, JSON records out.

Pure code (time is passed in). Allowed flows come from the sandbox's
conntrack: the policy's allowing rules set the flow's conntrack mark to a
tag (netwrap.policy.nft.verdict_tags), a "new" event opens the flow, TCP
state updates tell when it closed, and the "destroy" event, which carries
the byte and packet counters, closes the record. Flows without a tag are the
sandbox talking to itself (loopback) or netwrap's own DNS proxy, and are
not logged. Refused flows never become conntrack entries; their packets
arrive through NFLOG with the tag in the prefix, and packets of one 5-tuple
are one flow until it has been quiet for ``idle`` seconds.

A record (one JSON object per line):
  start, end        ISO 8601 UTC, microseconds
  protocol          tcp, udp, icmp, icmpv6
  source, destination   {"address", "port"} (port null for ICMP), as the command sent it
  translated_destination   where NAT sent it instead, if anywhere (DNS is not NATed: netwrap.dns.path)
  direction         "inbound" for a flow that came in through --publish (source is
                    then the client, destination the sandbox's port, bytes_sent what
                    the client sent); absent for the command's own outbound flows
  verdict           allow | deny
  decided_by        "--allow '93.184.215.14:80'", "--block-private", "default policy", ...
  bytes_sent, bytes_received, packets_sent, packets_received
                    IP bytes, headers included (conntrack accounting); a
                    refused flow received nothing
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Optional

import attrs

from netwrap.backends import PUBLISHED_CT_MARK
from netwrap.linux.nfnetlink import TCP_CLOSING_STATES, CtEvent, Endpoint, LoggedPacket
from netwrap.policy.nft import LOG_PREFIX, TAG_PUBLISHED
from netwrap.policy.model import SOURCE_DEFAULT, SOURCE_DNS, SOURCE_LOCAL, SOURCE_PUBLISH, Decision

BLOCKED_IDLE = 2.0  # seconds; ping sends once a second
MAX_OPEN = 65536  # bound on flows remembered at once (a flood must not eat memory)


def decided_by(decision: Decision) -> str:
    if decision.rule is not None:
        return decision.rule.describe()
    if decision.source == SOURCE_DEFAULT:
        return "default policy"
    if decision.source == SOURCE_DNS:
        return "the sandbox's DNS resolver"
    if decision.source == SOURCE_LOCAL:
        return "the sandbox itself"
    return f"--{decision.source}"


def iso(timestamp: float) -> str:
    import datetime  # only a flow log pays for it

    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(
        timespec="microseconds").replace("+00:00", "Z")


def _endpoint(e: Endpoint) -> dict:
    return {"address": str(e.address), "port": e.port}


@attrs.define
class _Open:
    event: CtEvent
    decision: Decision
    start: float
    closed: Optional[float] = None


@attrs.define
class _Blocked:
    packet: LoggedPacket
    decision: Decision
    start: float
    last: float
    packets: int = 0
    bytes: int = 0


class FlowBook:
    """Feed events in; collect the records they complete."""

    def __init__(self, tags: Mapping[int, Decision], *, idle: float = BLOCKED_IDLE) -> None:
        self._tags = dict(tags)
        self._idle = idle
        self._open: dict[int, _Open] = {}
        self._blocked: dict[tuple, _Blocked] = {}
        # Flows already written: a late event for one must not reopen it.
        self._done_ids: set[int] = set()
        self.allowed = 0
        self.inbound = 0  # of the allowed: inbound through --publish
        self.blocked = 0
        self.unknown = 0  # events we could not attribute (bad tag)

    # -- allowed flows: conntrack ------------------------------------------------------------

    def on_ct(self, event: CtEvent, now: float) -> list[dict]:
        # A published connection the backend made inside itself (tunrelay) carries its bit, not a tag.
        tag = TAG_PUBLISHED if event.mark & PUBLISHED_CT_MARK else event.mark
        decision = self._tags.get(tag)
        if tag == 0:
            return []
        if decision is None:
            self.unknown += 1
            return []
        flow = self._open.get(event.id)
        if flow is None:
            if event.kind != "new" and event.id in self._done_ids:
                return []
            self._done_ids.discard(event.id)  # ids are reused after a while
            start = event.start_ns / 1e9 if event.start_ns else now
            flow = _Open(event=event, decision=decision, start=start)
            if len(self._open) < MAX_OPEN:
                self._open[event.id] = flow
            self.allowed += 1
            if decision.source == SOURCE_PUBLISH:
                self.inbound += 1
        if (event.kind == "update" and event.tcp_state in TCP_CLOSING_STATES and flow.closed is None):
            flow.closed = now
        if event.kind != "destroy":
            return []
        self._open.pop(event.id, None)
        self._remember_done(event.id)
        end = flow.closed or (event.stop_ns / 1e9 if event.stop_ns else now)
        first = flow.event
        record = {
            "start": iso(flow.start), "end": iso(max(end, flow.start)), "protocol": first.proto,
            "source": _endpoint(first.src), "destination": _endpoint(first.dst),
        }
        reply = event.reply_src or first.reply_src
        if reply is not None and (reply.address, reply.port) != (first.dst.address, first.dst.port):
            record["translated_destination"] = _endpoint(reply)
        if flow.decision.source == SOURCE_PUBLISH:
            record["direction"] = "inbound"
        record.update({
            "verdict": flow.decision.verdict, "decided_by": decided_by(flow.decision),
            "bytes_sent": event.bytes_orig, "bytes_received": event.bytes_reply,
            "packets_sent": event.packets_orig, "packets_received": event.packets_reply,
        })
        return [record]

    def _remember_done(self, ident: int) -> None:
        if len(self._done_ids) >= MAX_OPEN:
            self._done_ids.clear()
        self._done_ids.add(ident)

    # -- refused flows: NFLOG ---------------------------------------------------------------------

    def on_blocked(self, packet: LoggedPacket, now: float) -> list[dict]:
        if not packet.prefix.startswith(LOG_PREFIX):
            return []
        try:
            decision = self._tags[int(packet.prefix[len(LOG_PREFIX):].strip())]
        except (ValueError, KeyError):
            self.unknown += 1
            return []
        key = (packet.proto, packet.src, packet.dst, decision)
        out = self.due(now)
        flow = self._blocked.get(key)
        if flow is None:
            if len(self._blocked) >= MAX_OPEN:
                out += self._emit_blocked(next(iter(self._blocked)))
            flow = self._blocked[key] = _Blocked(packet=packet, decision=decision, start=now, last=now)
            self.blocked += 1
        flow.last = now
        flow.packets += 1
        flow.bytes += packet.length
        return out

    def due(self, now: float) -> list[dict]:
        """Refused flows that have been quiet long enough to be over."""
        out: list[dict] = []
        for key in [k for k, f in self._blocked.items() if now - f.last >= self._idle]:
            out += self._emit_blocked(key)
        return out

    def next_deadline(self) -> Optional[float]:
        if not self._blocked:
            return None
        return min(f.last for f in self._blocked.values()) + self._idle

    def _emit_blocked(self, key: tuple) -> list[dict]:
        f = self._blocked.pop(key)
        return [{
            "start": iso(f.start), "end": iso(f.last), "protocol": f.packet.proto,
            "source": _endpoint(f.packet.src), "destination": _endpoint(f.packet.dst),
            "verdict": f.decision.verdict, "decided_by": decided_by(f.decision),
            "bytes_sent": f.bytes, "bytes_received": 0, "packets_sent": f.packets, "packets_received": 0,
        }]

    def close(self, now: float) -> list[dict]:
        """At the end: refused flows still pending. (Allowed ones end through
        destroy events, which the engine provokes by flushing conntrack.)"""
        out: list[dict] = []
        for key in list(self._blocked):
            out += self._emit_blocked(key)
        return out

    @property
    def open_flows(self) -> int:
        return len(self._open)


def dumps(record: dict) -> str:
    return json.dumps(record, separators=(", ", ": ")) + "\n"
