"""The relay's packet engine, sans I/O: TUN frames in, actions out.

The I/O layer (not here) owns the TUN fd, the listener and the host
sockets, and a clock.  Its whole job is::

    ev = core.from_tun(view_of_frame, now)       # after each TUN read
    WriteTun(data)        -> os.write(tun_fd, data)
    TcpConnect(flow)      -> connect to (flow.target, flow.tport); then
                             core.tcp_connected(flow, now) / core.tcp_failed(flow, kind)
    UdpSend(flow, dgrams, new) -> (new: open a socket connected to flow.target:tport)
                             send each datagram
    EchoSend(flow, seq, payload, new) -> ping socket send
    None                  -> nothing (dropped and counted, or absorbed)

and, from the host side: ``udp_from_host``, ``udp_error``, ``echo_from_host``,
``echo_error`` (each returns a WriteTun or None); ``tcp_flow_for_peer`` /
``original_destination`` for sockets accepted on the listener; ``expire(now)``
every second or so, closing the sockets of the flows it returns.

Views in events (datagrams, payloads) point into the frame passed to
``from_tun``: use them before reusing that buffer.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import NamedTuple, Union

from .counters import Counters, Drop, R
from .nat import (
    ACCEPT,
    ALLOW,
    REJECT,
    Flow,
    FlowTable,
    NatConfig,
    NewFlow,
    Policy,
    TcpFlow,
    TcpNat,
    Verdict,
)
from .packets import (
    ICMP,
    ICMPV6,
    TCP,
    UDP,
    Packet,
    build_echo_reply,
    build_icmp_unreachable,
    build_udp,
    ip_header,
    is_unicast,
    parse_frame,
    parse_ip,
)
from .vnet import GSO_ECN, GSO_UDP_L4, PLAIN_HDR, csum_header

__all__ = [
    "CoreConfig",
    "RelayCore",
    "WriteTun",
    "TcpConnect",
    "UdpSend",
    "EchoSend",
    "Closed",
    "Event",
    "policy_from_decide",
]


class WriteTun(NamedTuple):
    data: object  # bytes, bytearray or memoryview: one whole frame


class TcpConnect(NamedTuple):
    flow: TcpFlow


class UdpSend(NamedTuple):
    flow: Flow
    datagrams: tuple  # memoryviews; several when the child used UDP GSO
    new: bool


class EchoSend(NamedTuple):
    flow: Flow
    seq: int
    payload: memoryview
    new: bool


class Closed(NamedTuple):
    flow: Union[TcpFlow, Flow]


Event = Union[WriteTun, TcpConnect, UdpSend, EchoSend]

_D_BAD_ADDRESS = Drop(R.BAD_ADDRESS)
_UDP_HDR = struct.Struct("!HHHH")
_ECHO_HDR = struct.Struct("!BBHHH")


@dataclass(frozen=True)
class CoreConfig:
    vnet: bool = True  # frames carry a virtio_net_hdr (IFF_VNET_HDR)
    nat: NatConfig = field(default_factory=NatConfig)
    udp_max_flows: int = 4096  # each is a host socket: keep below RLIMIT_NOFILE
    udp_timeout: float = 120.0  # RFC 4787 REQ-5: at least 2 minutes
    echo_max_flows: int = 256
    echo_timeout: float = 30.0
    mtu: int = 65520  # largest packet built towards the child
    offload_udp_csum: bool = True  # UDP to the child with partial checksum


class RelayCore:
    def __init__(self, config: CoreConfig | None = None, policy: Policy | None = None,
                 counters: Counters | None = None) -> None:
        self.config = config = config or CoreConfig()
        self.counters = counters if counters is not None else Counters()
        self._policy = policy
        self._vnet = config.vnet
        self._prefix = PLAIN_HDR if config.vnet else b""
        self.nat = TcpNat(config.nat, self.counters, policy)
        self.udp = FlowTable(UDP, config.udp_max_flows, config.udp_timeout)
        self.echo = FlowTable(ICMP, config.echo_max_flows, config.echo_timeout)

    # -- from the child ------------------------------------------------------
    def from_tun(self, frame, now: float) -> Event | None:
        pkt = parse_frame(frame, self._vnet)
        if type(pkt) is Drop:
            self.counters.drop(pkt)
            return None
        if pkt.proto == TCP:
            r = self.nat.rewrite(pkt, now)
            t = type(r)
            if t is memoryview or t is bytes or t is bytearray:
                return WriteTun(r)
            if t is NewFlow:
                return TcpConnect(r.flow)
            self.counters.drop(r)
            return None
        if not (is_unicast(pkt.dst) and is_unicast(pkt.src)):
            self.counters.drop(_D_BAD_ADDRESS)  # broadcasts, MLD/ND multicast...
            return None
        if pkt.proto == UDP:
            return self._udp_out(pkt, now)
        if pkt.is_echo_request and pkt.icmp_code == 0:
            return self._echo_out(pkt, now)
        self.counters.add(R.ICMP_ERROR_FROM_CHILD if pkt.is_icmp_error else R.ICMP_IGNORED)
        return None

    def _decide(self, pkt: Packet):
        """Policy for a new UDP/echo flow: a Verdict, or a ready answer."""
        verdict = ALLOW if self._policy is None else self._policy(pkt)
        if verdict.action == ACCEPT:
            return verdict
        if verdict.action == REJECT:
            self.counters.add(R.POLICY_REJECT)
            kind = "port" if verdict.reject == "rst" else verdict.reject
            out = build_icmp_unreachable(pkt, kind, prefix=self._prefix)
            return WriteTun(out) if out is not None else None
        self.counters.add(R.POLICY_DROP)
        return None

    def _flow_for(self, table, key: tuple, pkt: Packet, now: float):
        """(flow, new, None) for a datagram flow, judged by the policy when
        new; (None, True, answer) when the policy refuses it (answer: None
        or the WriteTun telling the child)."""
        flow = table.get(key)
        if flow is not None:
            table.touch(flow, now)
            return flow, False, None
        verdict = self._decide(pkt)
        if not isinstance(verdict, Verdict):
            return None, True, verdict
        return table.create(key, now, verdict.target), True, None

    def _udp_out(self, pkt: Packet, now: float):
        flow, new, refused = self._flow_for(self.udp, (pkt.src, pkt.sport, pkt.dst, pkt.dport), pkt, now)
        if flow is None:
            return refused
        payload = pkt.frame[pkt.payload:pkt.end]
        v = pkt.vnet
        if v is not None and v.gso_type & ~GSO_ECN == GSO_UDP_L4:
            g = v.gso_size  # USO: one datagram per gso_size bytes of payload
            return UdpSend(flow, tuple(payload[i:i + g] for i in range(0, len(payload), g)), new)
        return UdpSend(flow, (payload,), new)

    def _echo_out(self, pkt: Packet, now: float):
        flow, new, refused = self._flow_for(self.echo, (pkt.src, pkt.sport, pkt.dst, 0), pkt, now)
        if flow is None:
            return refused
        return EchoSend(flow, pkt.seq, pkt.frame[pkt.payload:pkt.end], new)

    # -- TCP connect results and listener lookups ------------------------------
    def tcp_connected(self, flow: TcpFlow, now: float) -> WriteTun | None:
        out = self.nat.connected(flow, now)
        return None if out is None else WriteTun(out)

    def tcp_failed(self, flow: TcpFlow, kind: str = "refused") -> WriteTun | None:
        out = self.nat.failed(flow, kind)
        return None if out is None else WriteTun(out)

    def tcp_flow_for_peer(self, addr, port: int) -> TcpFlow | None:
        return self.nat.flow_for_peer(addr, port)

    def original_destination(self, addr, port: int) -> tuple[bytes, int] | None:
        return self.nat.original_destination(addr, port)

    # -- from the host ------------------------------------------------------
    def udp_from_host(self, flow: Flow, payload, now: float) -> WriteTun | None:
        """A datagram the flow's host socket received: deliver it to the child
        as if sent by the destination the child used."""
        if self.udp.by_id(flow.id) is not flow:
            return None
        self.udp.touch(flow, now)
        iphl = 20 if len(flow.src) == 4 else 40
        # No fragmentation here: a datagram must fit the MTU and the IP
        # length field (IPv4 total length, IPv6 payload length).
        size = iphl + 8 + len(payload)
        if size > self.config.mtu or size - (0 if iphl == 20 else 40) > 65535:
            self.counters.add(R.TOO_BIG)
            return None
        if self._vnet and self.config.offload_udp_csum:
            return WriteTun(build_udp(flow.dst, flow.src, flow.dport, flow.sport, payload,
                                      partial=True, prefix=csum_header(iphl, 6)))
        return WriteTun(build_udp(flow.dst, flow.src, flow.dport, flow.sport, payload,
                                  prefix=self._prefix))

    def udp_error(self, flow: Flow, kind: str = "port") -> WriteTun | None:
        """The host socket reported an ICMP error (ECONNREFUSED: "port",
        EHOSTUNREACH: "host", ENETUNREACH: "net", EACCES/EPERM: "admin")."""
        quoted = ip_header(flow.src, flow.dst, UDP, 8) + _UDP_HDR.pack(flow.sport, flow.dport, 8, 0)
        return self._unreachable(quoted, kind)

    def echo_from_host(self, flow: Flow, seq: int, payload, now: float) -> WriteTun | None:
        if self.echo.by_id(flow.id) is not flow:
            return None
        self.echo.touch(flow, now)
        if (20 if len(flow.src) == 4 else 40) + 8 + len(payload) > self.config.mtu:
            self.counters.add(R.TOO_BIG)
            return None
        return WriteTun(build_echo_reply(flow.dst, flow.src, flow.sport, seq, payload,
                                         prefix=self._prefix))

    def echo_error(self, flow: Flow, seq: int, kind: str = "host") -> WriteTun | None:
        typ, proto = (8, ICMP) if len(flow.src) == 4 else (128, ICMPV6)
        quoted = ip_header(flow.src, flow.dst, proto, 8) + _ECHO_HDR.pack(typ, 0, 0, flow.sport, seq)
        return self._unreachable(quoted, kind)

    def _unreachable(self, quoted: bytes, kind: str) -> WriteTun | None:
        pkt = parse_ip(quoted)
        if type(pkt) is not Packet:
            return None
        out = build_icmp_unreachable(pkt, kind, prefix=self._prefix)
        return None if out is None else WriteTun(out)

    # -- housekeeping --------------------------------------------------------
    def forget(self, flow: Union[TcpFlow, Flow]) -> None:
        """The I/O layer closed this flow's sockets on its own."""
        if isinstance(flow, TcpFlow):
            self.nat.remove(flow)
        elif flow.proto == UDP:
            self.udp.remove(flow)
        else:
            self.echo.remove(flow)

    def expire(self, now: float) -> list[Closed]:
        """Flows to close: idle past their timeout, or evicted to make room."""
        out = [Closed(f) for f in self.nat.expire(now)]
        out.extend(Closed(f) for f in self.udp.expire(now))
        out.extend(Closed(f) for f in self.echo.expire(now))
        return out

    def stats(self) -> dict[str, int]:
        s = self.counters.snapshot()
        s.update(tcp_flows=len(self.nat), tcp_pending=self.nat.pending,
                 held_bytes=self.nat.held_bytes, udp_flows=len(self.udp),
                 echo_flows=len(self.echo))
        return s


def policy_from_decide(decide, *, dns4: tuple[bytes, int] | None = None,
                       dns6: tuple[bytes, int] | None = None, reject: str = "admin") -> Policy:
    """Adapt a front-end ``decide(proto, address, port) -> obj.allowed``
    (netwrap.policy.model.Policy.decide) to the engine's per-packet policy.

    ``dns4``/``dns6`` force every port-53 flow (TCP and UDP) to that
    resolver; the decision is then about the resolver, as the nftables
    ruleset decides after its DNAT.  Denied flows are rejected with an ICMP
    unreachable of kind ``reject`` (or a TCP reset with "rst"), so clients
    fail fast instead of timing out.  Called once per new flow, not per
    packet, so the conversion to ipaddress objects is affordable.
    """
    def policy(pkt: Packet) -> Verdict:
        proto = "tcp" if pkt.proto == TCP else "udp" if pkt.proto == UDP else "icmp"
        target = None
        if proto != "icmp" and pkt.dport == 53:
            target = dns4 if pkt.version == 4 else dns6
        addr, port = target if target is not None else (pkt.dst, pkt.dport)
        if not decide(proto, ipaddress.ip_address(addr), None if proto == "icmp" else port).allowed:
            return Verdict(REJECT, reject=reject)
        return ALLOW if target is None else Verdict(target=target)

    return policy
