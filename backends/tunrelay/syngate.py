"""The fast path's SYN gate, sans I/O: hold a new connection until the host
has connected, so the child sees "refused" or "unreachable" as on a real path.

With TPROXY the child's own kernel answers the SYN, so its connect()
would succeed before netwrap knows whether the far end exists.  So the
fast path's nftables rules leave a connection's *first* packet (a pure SYN)
on its normal route, out of the TUN, and mark only the rest for TPROXY:

    child SYN A:a -> D:d      read from the TUN: held here; the I/O layer
                              connects to D:d from the host
    connected                 the held SYN is written back into the TUN,
                              TPROXY hands it to the transparent listener,
                              whose SYN-ACK (from D:d) reaches the app over lo
    refused / unreachable     a RST or an ICMP unreachable from D:d is
                              written into the TUN instead: ECONNREFUSED,
                              EHOSTUNREACH at once, never a timeout
    accept()                  local address D:d, peer A:a: :meth:`take`
                              finds the flow and its host-side socket

A retransmitted SYN while connecting is absorbed (the newest copy kept);
one after "connected" is written back again (the first may have been lost).
Bounds: entries, pending connects, bytes of held SYNs; a connect that
takes too long ends as "host unreachable", a connected flow whose accept
never comes is forgotten (the I/O layer closes its socket).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from .counters import Counters, Drop, R
from .nat import ACCEPT, REJECT, Verdict
from .packets import ACK, RST, SYN, UNREACH_CODES, Packet, build_icmp_unreachable, build_tcp_rst, parse_frame
from .vnet import PLAIN_HDR

PENDING, READY = 0, 1

D_NOT_SYN = Drop(R.TCP_NO_FLOW)
D_PENDING = Drop(R.TCP_PENDING)
D_LIMIT = Drop(R.TCP_FLOW_LIMIT)
D_PENDING_LIMIT = Drop(R.TCP_PENDING_LIMIT)
D_HELD_LIMIT = Drop(R.HELD_BYTES_LIMIT)
D_POLICY = Drop(R.POLICY_DROP)


class GateFlow:
    """One held connection.  ``upstream`` is the I/O layer's (its socket)."""

    __slots__ = ("key", "target", "tport", "state", "syn", "vnet", "since", "upstream")

    def __repr__(self) -> str:
        return f"<GateFlow {self.key!r} {'pending' if self.state == PENDING else 'ready'}>"


class Connect:
    """A new flow: connect to ``flow.target:flow.tport``, then call
    :meth:`SynGate.connected` or :meth:`SynGate.failed`."""

    __slots__ = ("flow",)

    def __init__(self, flow: GateFlow) -> None:
        self.flow = flow


class SynGate:
    def __init__(self, *, counters: Counters | None = None,
                 policy: Callable[[Packet], Verdict] | None = None,
                 max_flows: int = 4096, max_pending: int = 1024, max_held_bytes: int = 4 << 20,
                 pending_timeout: float = 20.0, accept_timeout: float = 10.0) -> None:
        self.counters = counters if counters is not None else Counters()
        self._policy = policy
        self.max_flows = max_flows
        self.max_pending = max_pending
        self.max_held_bytes = max_held_bytes
        self._timeouts = (pending_timeout, accept_timeout)
        # one LRU per state, oldest first: each has one timeout
        self._lru: tuple[OrderedDict, OrderedDict] = (OrderedDict(), OrderedDict())
        self._held_bytes = 0

    def __len__(self) -> int:
        return len(self._lru[PENDING]) + len(self._lru[READY])

    @property
    def pending(self) -> int:
        return len(self._lru[PENDING])

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def _get(self, key: tuple) -> GateFlow | None:
        return self._lru[PENDING].get(key) or self._lru[READY].get(key)

    # -- from the TUN ------------------------------------------------------------------------
    def from_tun(self, pkt: Packet, now: float):
        """A TCP packet read from the TUN.  Returns a frame to write (bytes), a
        :class:`Connect`, or a Drop (counted by the caller)."""
        prefix = PLAIN_HDR if pkt.vnet is not None else b""
        if pkt.tcp_flags & (SYN | ACK | RST) != SYN:
            # Only first SYNs leave by the TUN; anything else here belongs to
            # no flow we know (the ruleset was changed under us): reset it.
            rst = build_tcp_rst(pkt, prefix=prefix)
            return rst if rst is not None else D_NOT_SYN
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        flow = self._get(key)
        if flow is not None:
            if flow.state == READY:
                self._lru[READY].move_to_end(key)
                return bytes(pkt.frame[:pkt.end])
            self._hold(flow, pkt)  # keep the newest copy of a retransmitted SYN
            return D_PENDING
        verdict = None if self._policy is None else self._policy(pkt)
        if verdict is not None and verdict.action != ACCEPT:
            if verdict.action == REJECT:
                self.counters.add(R.POLICY_REJECT)
                out = _error_reply(pkt, verdict.reject, prefix)
                if out is not None:
                    return out
            return D_POLICY
        if len(self) >= self.max_flows and not self._evict_ready():
            return D_LIMIT
        if len(self._lru[PENDING]) >= self.max_pending:
            return D_PENDING_LIMIT
        if self._held_bytes + pkt.end > self.max_held_bytes:
            return D_HELD_LIMIT
        flow = GateFlow()
        flow.key = key
        flow.target, flow.tport = (verdict.target if verdict is not None and verdict.target
                                   else (pkt.dst, pkt.dport))
        flow.state = PENDING
        flow.syn = None
        flow.since = now
        flow.upstream = None
        self._hold(flow, pkt)
        self._lru[PENDING][key] = flow
        return Connect(flow)

    def _hold(self, flow: GateFlow, pkt: Packet) -> None:
        if flow.syn is not None:
            self._held_bytes -= len(flow.syn)
        flow.syn = bytes(pkt.frame[:pkt.end])
        flow.vnet = pkt.vnet is not None
        self._held_bytes += len(flow.syn)

    def _evict_ready(self) -> bool:
        lru = self._lru[READY]
        if not lru:
            return False
        _, flow = lru.popitem(last=False)
        self._release(flow)
        return True

    def _release(self, flow: GateFlow) -> None:
        if flow.syn is not None:
            self._held_bytes -= len(flow.syn)
            flow.syn = None

    # -- results of the host-side connect ------------------------------------------------------
    def connected(self, flow: GateFlow, now: float) -> bytes | None:
        """The host connected: the held SYN to write into the TUN, or None if
        the flow is gone meanwhile (then close the socket)."""
        if self._lru[PENDING].pop(flow.key, None) is not flow:
            return None
        flow.state = READY
        flow.since = now
        self._lru[READY][flow.key] = flow
        return flow.syn

    def failed(self, flow: GateFlow, kind: str = "refused") -> bytes | None:
        """The connect failed: "refused" (a RST for the child), "host", "net",
        "admin", "port" or "timeout" (an ICMP unreachable).  The frame to
        write, or None; the flow is removed."""
        if self._lru[PENDING].pop(flow.key, None) is not flow:
            return None
        syn = flow.syn
        self._release(flow)
        pkt = parse_frame(syn, vnet=flow.vnet)
        if type(pkt) is not Packet:
            return None
        return _error_reply(pkt, "rst" if kind == "refused" else kind, PLAIN_HDR if flow.vnet else b"")

    # -- the listener side ---------------------------------------------------------------------
    def take(self, key: tuple) -> GateFlow | None:
        """The flow that an accepted socket (peer A:a, local D:d; key
        (A, a, D, d) with packed addresses) belongs to, removed from the gate."""
        flow = self._lru[READY].pop(key, None)
        if flow is not None:
            self._release(flow)
        return flow

    def expire(self, now: float) -> list[tuple[GateFlow, bytes | None]]:
        """(flow, frame to write or None) for flows past their time: pending
        ones fail as "host unreachable", ready ones are just dropped."""
        out: list[tuple[GateFlow, bytes | None]] = []
        pending_limit, ready_limit = self._timeouts
        lru = self._lru[PENDING]
        while lru:
            flow = next(iter(lru.values()))
            if now - flow.since < pending_limit:
                break
            out.append((flow, self.failed(flow, "timeout")))
        lru = self._lru[READY]
        while lru:
            flow = next(iter(lru.values()))
            if now - flow.since < ready_limit:
                break
            del lru[flow.key]
            self._release(flow)
            out.append((flow, None))
        return out


def _error_reply(pkt: Packet, kind: str, prefix: bytes) -> bytes | None:
    if kind == "rst":
        return build_tcp_rst(pkt, prefix=prefix)
    return build_icmp_unreachable(pkt, kind if kind in UNREACH_CODES else "host", prefix=prefix)
