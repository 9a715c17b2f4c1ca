"""The TUN NAT for TCP, and the flow tables for UDP and ICMP echo.

TCP is never terminated in Python.  A connection the child opens through
the TUN is turned, packet by packet, into a connection *to a listener of
the relay in the child's own netns*:

    child app  A:a -> D:d        (read from the TUN, "outbound")
    rewritten  F:f -> L:l        written back: the child's kernel sees a SYN
                                 from fake peer F:f to the listener L:l
    listener   L:l -> F:f        (read from the TUN: F is routed to it, "inbound")
    rewritten  D:d -> A:a        written back: the app sees D answering

F:f comes from a pool of fake addresses routed to the TUN and identifies the
flow: the relay accepts on L:l, sees peer F:f, and asks
:meth:`TcpNat.original_destination` where to connect (D:d, or where the
policy redirects it).  Both kernels do all of TCP; the NAT only swaps
addresses and ports and patches checksums (RFC 1624), so its cost does not
depend on segment size, and 64 KiB GSO segments pass untouched.

Holding the SYN (default): the first SYN of a flow is kept, not forwarded,
and :class:`NewFlow` tells the I/O layer to connect out first.  Success
(:meth:`TcpNat.connected`) releases the SYN; failure (:meth:`TcpNat.failed`)
answers the child with a RST (refused) or an ICMP unreachable, the way a
real path would, instead of an accepted connection that then drops.

Bounds: number of flows, number of pending connects, bytes of held SYNs;
eviction takes the least recently active flow, closing ones first.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from .counters import Counters, Drop, R
from .packets import (
    ACK,
    FIN,
    RST,
    SYN,
    UNREACH_CODES,
    Packet,
    build_icmp_unreachable,
    build_tcp_rst,
    endpoint_deltas,
    is_unicast,
    parse_frame,
    rewrite_endpoints,
)
from .vnet import PLAIN_HDR

__all__ = [
    "Verdict",
    "ACCEPT",
    "DROP",
    "REJECT",
    "ALLOW",
    "NatConfig",
    "TcpFlow",
    "NewFlow",
    "TcpNat",
    "Flow",
    "FlowTable",
    "to_bytes_addr",
]

# -------------------------------------------------------------------------
# Policy verdicts (shared with the UDP/ICMP paths of the engine)

ACCEPT, DROP, REJECT = 0, 1, 2


class Verdict(NamedTuple):
    """What the policy says about a new flow.

    ``target`` redirects the host-side connection (DNS forcing, proxies);
    the child keeps seeing the original destination.  ``reject`` is "rst"
    (TCP reset; port unreachable for UDP) or an unreachable kind: "admin",
    "host", "net", "port".
    """

    action: int = ACCEPT
    target: tuple[bytes, int] | None = None
    reject: str = "admin"


ALLOW = Verdict()
Policy = Callable[[Packet], Verdict]

D_NO_FLOW = Drop(R.TCP_NO_FLOW)
D_PENDING = Drop(R.TCP_PENDING)
D_FLOW_LIMIT = Drop(R.TCP_FLOW_LIMIT)
D_PENDING_LIMIT = Drop(R.TCP_PENDING_LIMIT)
D_HELD_LIMIT = Drop(R.HELD_BYTES_LIMIT)
D_NO_LISTENER = Drop(R.NO_LISTENER)
D_NO_POOL = Drop(R.NO_POOL)
D_POLICY = Drop(R.POLICY_DROP)
D_BAD_ADDRESS = Drop(R.BAD_ADDRESS)


def to_bytes_addr(a) -> bytes:
    """bytes, str or ipaddress object -> packed address (config time only)."""
    if isinstance(a, (bytes, bytearray)):
        if len(a) not in (4, 16):
            raise ValueError(f"address must be 4 or 16 bytes, got {len(a)}")
        return bytes(a)
    return ipaddress.ip_address(a).packed


def _pool(spec, version: int, cap: int = 4096) -> tuple[bytes, ...]:
    """A network ("10.0.3.0/24") or an iterable of addresses -> packed tuple.

    Only the first ``cap`` addresses of a network are used: one address
    already gives 64512 ports, more only spreads reuse further apart.
    """
    if not spec:
        return ()
    if isinstance(spec, (str, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        net = ipaddress.ip_network(spec, strict=False)
        out = []
        for a in net.hosts() if net.num_addresses > 2 else net:
            out.append(a.packed)
            if len(out) >= cap:
                break
    else:
        out = [to_bytes_addr(a) for a in spec]
    want = 4 if version == 4 else 16
    if any(len(a) != want for a in out):
        raise ValueError(f"pool{version} holds an address of the wrong family")
    return tuple(out)


@dataclass(frozen=True)
class NatConfig:
    """TCP NAT settings.  Addresses may be given as str, ipaddress objects
    or packed bytes; they are stored packed."""

    listener4: tuple | None = None  # (address, port) of the relay's listener
    listener6: tuple | None = None
    pool4: object = ()  # network or addresses routed to the TUN
    pool6: object = ()
    ports: tuple[int, int] = (1024, 65535)  # fake port range
    max_flows: int = 8192
    max_pending: int = 1024
    max_held_bytes: int = 4 << 20
    hold_syn: bool = True
    pending_timeout: float = 30.0
    established_timeout: float = 7440.0  # RFC 5382 REQ-5: at least 2 h 4 min
    closing_timeout: float = 60.0  # after a RST or FINs both ways (~2 MSL)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name, fam in (("listener4", 4), ("listener6", 6)):
            val = getattr(self, name)
            if val is not None:
                addr, port = to_bytes_addr(val[0]), int(val[1])
                if len(addr) != (4 if fam == 4 else 16) or not 0 < port < 65536:
                    raise ValueError(f"bad {name}: {val!r}")
                set_(self, name, (addr, port))
        set_(self, "pool4", _pool(self.pool4, 4))
        set_(self, "pool6", _pool(self.pool6, 6))
        lo, hi = self.ports
        if not 0 < lo <= hi < 65536:
            raise ValueError(f"bad fake port range {self.ports!r}")
        for fam, pool, lst in ((4, self.pool4, self.listener4), (6, self.pool6, self.listener6)):
            if pool and len(pool) * (hi - lo + 1) < self.max_flows:
                raise ValueError(f"pool{fam} too small for max_flows={self.max_flows}")
            if lst is not None and lst[0] in pool:
                raise ValueError(f"listener{fam} address must not be in pool{fam}")
        if not 0 < self.max_pending <= self.max_flows:
            raise ValueError("need 0 < max_pending <= max_flows")


PENDING, OPEN, CLOSING, REMOVED = 0, 1, 2, 3
_STATE_NAMES = ("pending", "open", "closing", "removed")


class TcpFlow:
    """One NATed TCP connection.  Read its attributes; the table owns it.

    ``src:sport -> dst:dport`` is what the child sent; ``fake:fport`` the
    peer the listener sees; ``target:tport`` where the relay should connect.
    """

    __slots__ = ("id", "src", "sport", "dst", "dport", "fake", "fport", "laddr", "lport",
                 "target", "tport", "state", "fin", "last", "held", "held_vnet", "d_out", "d_in")

    def __repr__(self) -> str:
        return (f"<TcpFlow #{self.id} {_fmt(self.src, self.sport)}->{_fmt(self.dst, self.dport)}"
                f" via {_fmt(self.fake, self.fport)} {_STATE_NAMES[self.state]}>")


def _fmt(addr: bytes, port: int) -> str:
    a = ipaddress.ip_address(addr)
    return f"{a}:{port}" if a.version == 4 else f"[{a}]:{port}"


class NewFlow(NamedTuple):
    """The SYN is held: connect to ``flow.target:flow.tport``, then call
    :meth:`TcpNat.connected` or :meth:`TcpNat.failed`."""

    flow: TcpFlow


class TcpNat:
    """The TCP NAT table.  Sans-I/O: packets in, frames/events out; ``now``
    is any monotonic clock in seconds, passed by the caller."""

    def __init__(self, config: NatConfig, counters: Counters | None = None,
                 policy: Policy | None = None) -> None:
        self.config = config
        self.counters = counters if counters is not None else Counters()
        self._policy = policy
        # indexed by IP version: a list index is cheaper than a dict lookup
        self._listener = [None, None, None, None, config.listener4, None, config.listener6]
        self._pool = {4: config.pool4, 6: config.pool6}
        self._cursor = {4: 0, 6: 0}
        self._by_child: dict[tuple, TcpFlow] = {}
        self._by_fake: dict[tuple, TcpFlow] = {}
        # One LRU per state: each has a single timeout, so the head of each
        # is the next to expire, and eviction can prefer closing flows.
        self._lru: tuple[OrderedDict, ...] = (OrderedDict(), OrderedDict(), OrderedDict())
        self._timeout = (config.pending_timeout, config.established_timeout, config.closing_timeout)
        self._held_bytes = 0
        self._removed: list[TcpFlow] = []
        self._next_id = 1

    # -- introspection ----------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_fake)

    @property
    def pending(self) -> int:
        return len(self._lru[PENDING])

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def flows(self) -> Iterable[TcpFlow]:
        return list(self._by_fake.values())

    # -- lookups for the listener side -------------------------------------
    def flow_for_peer(self, addr, port: int) -> TcpFlow | None:
        """The flow whose fake peer is ``addr:port`` (what accept() returned)."""
        if not isinstance(addr, bytes):
            try:
                addr = to_bytes_addr(addr)
            except ValueError:
                return None
        return self._by_fake.get((addr, port))

    def original_destination(self, addr, port: int) -> tuple[bytes, int] | None:
        """Destination the child asked for, given the accepted peer address."""
        flow = self.flow_for_peer(addr, port)
        return None if flow is None else (flow.dst, flow.dport)

    # -- per-packet path ---------------------------------------------------
    def is_inbound(self, pkt: Packet) -> bool:
        """True for a packet the listener sent (towards a fake peer)."""
        lst = self._listener[pkt.version]
        return lst is not None and pkt.sport == lst[1] and pkt.src == lst[0]

    def rewrite(self, pkt: Packet, now: float):
        """Rewrite a TCP packet read from the TUN, whichever way it goes."""
        if self.is_inbound(pkt):
            return self.rewrite_inbound(pkt, now)
        return self.rewrite_outbound(pkt, now)

    def rewrite_outbound(self, pkt: Packet, now: float):
        """App -> far end.  Returns the frame to write to the TUN (rewritten,
        or a reply such as a RST), a :class:`NewFlow`, or a :class:`Drop`."""
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        flow = self._by_child.get(key)
        flags = pkt.tcp_flags
        if flow is None:
            if flags & (SYN | ACK | RST) == SYN:
                return self._open(pkt, key, now)
            return self._no_flow(pkt)
        state = flow.state
        if state == PENDING:
            if flags & RST:  # the app gave up before we connected
                self._remove(flow)
            return D_PENDING
        if state == CLOSING and flags & (SYN | ACK) == SYN:
            self._remove(flow)  # the app reuses the port: a new connection
            return self._open(pkt, key, now)
        self._track(flow, flags, 1, now)
        return rewrite_endpoints(pkt, flow.fake, flow.fport, flow.laddr, flow.lport, flow.d_out)

    def rewrite_inbound(self, pkt: Packet, now: float):
        """Listener -> app.  Returns a frame or a Drop."""
        flow = self._by_fake.get((pkt.dst, pkt.dport))
        if flow is None or flow.state == PENDING or pkt.sport != flow.lport or pkt.src != flow.laddr:
            return self._no_flow(pkt)
        self._track(flow, pkt.tcp_flags, 2, now)
        return rewrite_endpoints(pkt, flow.dst, flow.dport, flow.src, flow.sport, flow.d_in)

    def _track(self, flow: TcpFlow, flags: int, bit: int, now: float) -> None:
        flow.last = now
        if flags & (RST | FIN):
            if flags & RST:
                flow.fin = 3
            else:
                flow.fin |= bit
            if flow.fin == 3 and flow.state != CLOSING:
                del self._lru[flow.state][flow]
                flow.state = CLOSING
                self._lru[CLOSING][flow] = None
                return
        self._lru[flow.state].move_to_end(flow)

    def _no_flow(self, pkt: Packet):
        """A segment for no connection gets a RST, as from a real stack, so a
        flow lost to eviction or expiry ends promptly on both sides."""
        rst = build_tcp_rst(pkt, prefix=PLAIN_HDR if pkt.vnet is not None else b"")
        self.counters.add(R.TCP_NO_FLOW)
        return rst if rst is not None else D_NO_FLOW

    def _reply_error(self, pkt: Packet, kind: str):
        prefix = PLAIN_HDR if pkt.vnet is not None else b""
        if kind == "rst":
            out = build_tcp_rst(pkt, prefix=prefix)
        else:
            out = build_icmp_unreachable(pkt, kind if kind in UNREACH_CODES else "host", prefix=prefix)
        return out

    def _open(self, pkt: Packet, key: tuple, now: float):
        cfg = self.config
        lst = self._listener[pkt.version]
        if lst is None:
            return D_NO_LISTENER
        if pkt.dst == lst[0] or not (is_unicast(pkt.dst) and is_unicast(pkt.src)):
            return D_BAD_ADDRESS  # multicast/broadcast, or a loop through our listener
        verdict = ALLOW if self._policy is None else self._policy(pkt)
        if verdict.action != ACCEPT:
            if verdict.action == REJECT:
                self.counters.add(R.POLICY_REJECT)
                out = self._reply_error(pkt, verdict.reject)
                if out is not None:
                    return out
            return D_POLICY
        hold = cfg.hold_syn
        if hold:
            if len(self._lru[PENDING]) >= cfg.max_pending:
                return D_PENDING_LIMIT
            if self._held_bytes + pkt.end > cfg.max_held_bytes:
                return D_HELD_LIMIT
        if len(self._by_fake) >= cfg.max_flows and not self._evict():
            return D_FLOW_LIMIT
        fake = self._allocate(pkt.version)
        if fake is None:
            return D_NO_POOL
        flow = TcpFlow()
        flow.id = self._next_id
        self._next_id += 1
        flow.src, flow.sport, flow.dst, flow.dport = key
        flow.fake, flow.fport = fake
        flow.laddr, flow.lport = lst
        flow.target, flow.tport = verdict.target or (pkt.dst, pkt.dport)
        flow.fin = 0
        flow.last = now
        # Checksum deltas are fixed per direction: computed once, here.
        flow.d_out = endpoint_deltas(*key, *fake, *lst)
        flow.d_in = (-flow.d_out[0], -flow.d_out[1])
        self._by_child[key] = flow
        self._by_fake[fake] = flow
        if hold:
            flow.state = PENDING
            flow.held = bytes(pkt.frame[:pkt.end])
            flow.held_vnet = pkt.vnet is not None
            self._held_bytes += len(flow.held)
            self._lru[PENDING][flow] = None
            return NewFlow(flow)
        flow.state = OPEN
        flow.held = None
        self._lru[OPEN][flow] = None
        return rewrite_endpoints(pkt, flow.fake, flow.fport, flow.laddr, flow.lport, flow.d_out)

    def _allocate(self, version: int) -> tuple[bytes, int] | None:
        """Next free fake endpoint, round robin over the whole pool space so
        a fake peer is reused as late as possible (TIME_WAIT on the listener
        side).  At most len(table)+1 probes: the table bounds the used ones."""
        pool = self._pool[version]
        if not pool:
            return None
        lo, hi = self.config.ports
        nports = hi - lo + 1
        space = len(pool) * nports
        c = self._cursor[version]
        by_fake = self._by_fake
        for _ in range(min(space, len(by_fake) + 1)):
            cand = (pool[c // nports], lo + c % nports)
            c = c + 1 if c + 1 < space else 0
            if cand not in by_fake:
                self._cursor[version] = c
                return cand
        return None

    def _evict(self) -> bool:
        for state in (CLOSING, OPEN):
            lru = self._lru[state]
            if lru:
                self._remove(next(iter(lru)))
                return True
        return False

    def _remove(self, flow: TcpFlow, report: bool = True) -> None:
        if flow.state == REMOVED:
            return
        del self._lru[flow.state][flow]
        if self._by_child.get((flow.src, flow.sport, flow.dst, flow.dport)) is flow:
            del self._by_child[(flow.src, flow.sport, flow.dst, flow.dport)]
        self._by_fake.pop((flow.fake, flow.fport), None)
        if flow.held is not None:
            self._held_bytes -= len(flow.held)
            flow.held = None
        flow.state = REMOVED
        if report:
            self._removed.append(flow)

    # -- results of the I/O layer's connect ---------------------------------
    def _take_held(self, flow: TcpFlow) -> Packet | None:
        if flow.state != PENDING or flow.held is None:
            return None
        pkt = parse_frame(flow.held, vnet=flow.held_vnet)
        self._held_bytes -= len(flow.held)
        flow.held = None
        return pkt if isinstance(pkt, Packet) else None

    def connected(self, flow: TcpFlow, now: float):
        """The host-side connect succeeded: returns the held SYN, rewritten,
        to write to the TUN (None if the flow is gone meanwhile: close)."""
        pkt = self._take_held(flow)
        if pkt is None:
            return None
        del self._lru[PENDING][flow]
        flow.state = OPEN
        flow.last = now
        self._lru[OPEN][flow] = None
        return rewrite_endpoints(pkt, flow.fake, flow.fport, flow.laddr, flow.lport, flow.d_out)

    def failed(self, flow: TcpFlow, kind: str = "refused"):
        """The host-side connect failed.  ``kind``: "refused" (answered with
        a RST), "host", "net", "admin", "port" or "timeout" (ICMP
        unreachable; timeout maps to host unreachable).  Returns the frame to
        write, or None.  The flow is removed either way."""
        pkt = self._take_held(flow)
        self._remove(flow, report=False)
        if pkt is None:
            return None
        return self._reply_error(pkt, "rst" if kind == "refused" else kind)

    # -- housekeeping --------------------------------------------------------
    def remove(self, flow: TcpFlow) -> None:
        """The I/O layer is done with a flow (both sockets closed)."""
        self._remove(flow, report=False)

    def expire(self, now: float) -> list[TcpFlow]:
        """Remove idle flows; returns them plus any evicted since the last
        call, so the I/O layer can close their sockets."""
        out, self._removed = self._removed, []
        for state in (PENDING, OPEN, CLOSING):
            lru, limit = self._lru[state], self._timeout[state]
            while lru:
                flow = next(iter(lru))
                if now - flow.last < limit:
                    break
                self._remove(flow, report=False)
                out.append(flow)
        return out


# -------------------------------------------------------------------------
# UDP and ICMP echo: a flow is a host socket


class Flow:
    """A UDP or ICMP-echo flow of the child, backed by one host socket.

    For UDP ``sport``/``dport`` are ports; for echo ``sport`` is the
    child's identifier and ``dport`` 0.  ``target:tport`` is where the host
    socket sends (the destination unless the policy redirected it);
    replies are made to come from ``dst:dport``.
    """

    __slots__ = ("id", "proto", "src", "sport", "dst", "dport", "target", "tport", "last")

    def __repr__(self) -> str:
        return (f"<Flow #{self.id} proto {self.proto} {_fmt(self.src, self.sport)}"
                f"->{_fmt(self.dst, self.dport)}>")


class FlowTable:
    """Child flow (src, sport, dst, dport) -> :class:`Flow`, bounded, with
    idle expiry.  One table per protocol."""

    def __init__(self, proto: int, max_flows: int = 4096, idle_timeout: float = 120.0) -> None:
        if max_flows <= 0:
            raise ValueError("max_flows must be positive")
        self.proto = proto
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self._lru: OrderedDict[tuple, Flow] = OrderedDict()
        self._by_id: dict[int, Flow] = {}
        self._removed: list[Flow] = []
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, key: tuple) -> Flow | None:
        return self._lru.get(key)

    def by_id(self, flow_id: int) -> Flow | None:
        return self._by_id.get(flow_id)

    def touch(self, flow: Flow, now: float) -> None:
        flow.last = now
        key = (flow.src, flow.sport, flow.dst, flow.dport)
        if self._lru.get(key) is flow:
            self._lru.move_to_end(key)

    def create(self, key: tuple, now: float, target: tuple[bytes, int] | None = None) -> Flow:
        """Add a flow, evicting the least recently active one when full
        (reported by the next :meth:`expire`)."""
        old = self._lru.get(key)
        if old is not None:
            self.remove(old)
            self._removed.append(old)
        elif len(self._lru) >= self.max_flows:
            _, old = self._lru.popitem(last=False)
            del self._by_id[old.id]
            self._removed.append(old)
        f = Flow()
        f.id = self._next_id
        self._next_id += 1
        f.proto = self.proto
        f.src, f.sport, f.dst, f.dport = key
        f.target, f.tport = target or (key[2], key[3])
        f.last = now
        self._lru[key] = f
        self._by_id[f.id] = f
        return f

    def remove(self, flow: Flow) -> None:
        key = (flow.src, flow.sport, flow.dst, flow.dport)
        if self._lru.get(key) is flow:
            del self._lru[key]
            del self._by_id[flow.id]

    def expire(self, now: float) -> list[Flow]:
        out, self._removed = self._removed, []
        lru, limit = self._lru, self.idle_timeout
        while lru:
            key, flow = next(iter(lru.items()))
            if now - flow.last < limit:
                break
            del lru[key]
            del self._by_id[flow.id]
            out.append(flow)
        return out
