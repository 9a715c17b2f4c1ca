"""tunrelay's I/O loop: the TUN, the listeners, the host's sockets, one epoll.

(Named engine.py, not io.py: a module called io next to a script run from
this folder would shadow the standard library's.)

One thread runs :meth:`Engine.run`; everything it touches is its own, so
there are no locks.  Per event:

  TUN readable       frames -> the sans-I/O RelayCore (UDP, echo, and on the
                     NAT path TCP) or, on the fast path, TCP SYNs -> SynGate
  listener readable  accept; pair the child's socket with the host socket
                     connected for it; a Pump splices between them
  connect done       tell the core / the gate: the held SYN goes back into
                     the TUN, or a RST / ICMP unreachable instead
  UDP/echo socket    datagrams and echo replies -> core -> frames for the TUN
  pump socket        Pump.run (bounded work; leftovers are run next round)

Every second: expiry (core flows, gate flows, connect deadlines).

Untrusted input: whatever the child writes reaches only the total parsers
of the core; tables and buffers are bounded there and here (connects,
pumps, pipes); an unexpected exception while handling one event is counted
and that event's flow dropped, never the loop.  Sockets closed while a batch
of epoll events is handled are closed after it, so a stale event can never
reach a new socket that reused the number.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import time
import traceback
from collections import OrderedDict
from typing import Callable

from .core import EchoSend, RelayCore, TcpConnect, UdpSend, WriteTun
from .counters import Drop
from .nat import TcpFlow
from .packets import TCP, UDP, Packet, address_family, parse_frame
from .pump import PUMP_EVENTS_HINT as PUMP_EVENTS, PipePool, Pump
from .syngate import Connect, GateFlow, SynGate

EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLERR, select.EPOLLHUP

FRAME_BUFFER = 10 + 40 + 65535 + 64  # vnet header + largest IPv6 packet
TUN_BATCH = 128  # frames per readiness event before other fds get a turn
SOCKET_BATCH = 64  # datagrams per UDP/echo socket per event
CONNECT_TIMEOUT = 20.0  # then "host unreachable" (the NAT's own pending limit is 30 s)
ACCEPT_TIMEOUT = 10.0  # a host connection nobody accepted is closed after this
HOUSEKEEPING = 1.0

# How a failed connect is told to the child (see RelayCore.tcp_failed).
CONNECT_ERRORS = {
    errno.ECONNREFUSED: "refused",
    errno.ENETUNREACH: "net",
    errno.EHOSTUNREACH: "host",
    errno.EHOSTDOWN: "host",
    errno.ETIMEDOUT: "timeout",
    errno.EACCES: "admin",
    errno.EPERM: "admin",
}
DATAGRAM_ERRORS = {
    errno.ECONNREFUSED: "port",
    errno.ENETUNREACH: "net",
    errno.EHOSTUNREACH: "host",
    errno.EHOSTDOWN: "host",
    errno.EACCES: "admin",
    errno.EPERM: "admin",
}

_ECHO = struct.Struct("!BBHHH")
_TUN, _WAKE, _LISTEN, _CONNECT, _UDP, _ECHO_SOCK, _PUMP = range(7)


def _sockaddr(addr: bytes, port: int) -> tuple:
    return (socket.inet_ntop(address_family(addr), addr), port)


class OutboundDevice:
    """--iface: host sockets bound to one interface (SO_BINDTODEVICE), so they leave by it.

    Binding the interface's address instead would not do: the kernel picks
    the route by destination, so the packets would carry IFACE's address
    out of the host's default route. SO_BINDTODEVICE needs no privilege
    since Linux 5.7 for a socket not yet bound to a device (tunrelay's
    are fresh); `check()` finds out before the run starts.

    Host loopback (the gateway with --allow-host-loopback, a resolver such as
    127.0.0.53) is the host itself, not a way out: those sockets stay unbound.
    """

    def __init__(self, name: str) -> None:
        self.name = name.encode()

    def bind(self, sock: socket.socket, target: bytes) -> None:
        if not _is_loopback(target):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.name)

    def check(self) -> str | None:
        """Why sockets cannot be bound to the device here; None if they can."""
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.name)
        except OSError as exc:
            return (f"cannot bind sockets to {self.name.decode()} (SO_BINDTODEVICE: {exc.strerror}); "
                    "this needs Linux 5.7 or later, or CAP_NET_RAW")
        return None


def _is_loopback(addr: bytes) -> bool:
    return addr[0] == 127 if len(addr) == 4 else addr == LOOPBACK6


LOOPBACK6 = bytes(15) + b"\x01"


class EchoSocket:
    """A host socket for one echo flow: a ping socket, or raw as root."""

    __slots__ = ("sock", "raw", "ident", "last_seq", "v6")

    def __init__(self, sock: socket.socket, raw: bool, ident: int, v6: bool) -> None:
        self.sock, self.raw, self.ident, self.v6 = sock, raw, ident, v6
        self.last_seq = 0


class IcmpOpener:
    """Opens echo sockets: ping sockets (allowed by net.ipv4.ping_group_range),
    else raw sockets (root / CAP_NET_RAW), else says why not, once."""

    def __init__(self, outbound: OutboundDevice | None = None) -> None:
        self.kind: dict[int, str | None] = {}  # family -> "dgram" | "raw" | None (unknown yet)
        self.problem: str | None = None
        self.outbound = outbound

    def open(self, family: int, target: tuple) -> tuple[socket.socket, bool] | None:
        proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
        for kind in (("dgram", "raw") if self.kind.get(family) is None else (self.kind[family],)):
            stype = socket.SOCK_DGRAM if kind == "dgram" else socket.SOCK_RAW
            try:
                s = socket.socket(family, stype | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
            except OSError:
                continue
            try:
                if self.outbound is not None:
                    self.outbound.bind(s, socket.inet_pton(family, target[0]))
                s.connect(target)
            except OSError:
                s.close()
                raise
            self.kind[family] = kind
            return s, kind == "raw"
        self.problem = icmp_problem()
        return None


def icmp_problem(family: int | None = None) -> str | None:
    """Why this process can open neither ping nor raw sockets for ICMP echo
    (of ``family``, default both); None if it can."""
    families = (family,) if family is not None else (socket.AF_INET, socket.AF_INET6)
    for fam in families:
        proto = socket.IPPROTO_ICMP if fam == socket.AF_INET else socket.IPPROTO_ICMPV6
        ok = False
        for stype in (socket.SOCK_DGRAM, socket.SOCK_RAW):
            try:
                socket.socket(fam, stype, proto).close()
                ok = True
                break
            except OSError:
                continue
        if not ok:
            try:
                with open("/proc/sys/net/ipv4/ping_group_range") as f:
                    low, high = f.read().split()
            except (OSError, ValueError):
                low, high = "?", "?"
            gids = sorted({os.getegid(), *os.getgroups()})
            return (f"ping sockets are not allowed for this user (net.ipv4.ping_group_range is "
                    f"'{low} {high}', your groups are {', '.join(map(str, gids))}) and raw sockets need root; "
                    f"fix: sysctl -w net.ipv4.ping_group_range='0 2147483647' (as systemd sets it)")
    return None


class Engine:
    def __init__(self, *, tun_fd: int, core: RelayCore, gate: SynGate | None,
                 listeners: list[socket.socket], max_pumps: int = 4096,
                 clock: Callable[[], float] = time.monotonic, warn: Callable[[str], None] = lambda m: None,
                 outbound: OutboundDevice | None = None) -> None:
        self.tun_fd = tun_fd
        self.core = core
        self.counters = core.counters
        self.gate = gate  # None on the NAT path
        self.listeners = listeners
        self.max_pumps = max_pumps
        self.clock = clock
        self.warn = warn
        self.outbound = outbound
        self.icmp = IcmpOpener(outbound)
        self.pool = PipePool()
        self._ep = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._handlers: dict[int, tuple[int, object]] = {}
        self._stopping = False
        self._graveyard: list[socket.socket] = []
        self._ready: dict[Pump, None] = {}
        self._pumps: dict[Pump, None] = {}
        self._pump_of_flow: dict[int, Pump] = {}  # NAT flow id -> its pump
        # fd -> (socket, flow, deadline); insertion order is deadline order
        self._connecting: OrderedDict[int, tuple[socket.socket, object, float]] = OrderedDict()
        self._awaiting: OrderedDict[int, tuple[socket.socket, float]] = OrderedDict()  # NAT flow id
        self._udp: dict[int, socket.socket] = {}
        self._echo: dict[int, EchoSocket] = {}
        self._buf = bytearray(FRAME_BUFFER)
        self._mv = memoryview(self._buf)
        self._icmp_warned = False
        self.stats_extra = {"tun_write_errors": 0, "internal_errors": 0, "accept_unmatched": 0,
                            "pump_limit": 0, "tcp_relayed": 0}
        self._register(self._wake_r, EPOLLIN, _WAKE, None)
        self._register(tun_fd, EPOLLIN, _TUN, None)
        for s in listeners:
            s.setblocking(False)
            self._register(s.fileno(), EPOLLIN, _LISTEN, s)

    # -- plumbing -------------------------------------------------------------------------------
    def _register(self, fd: int, events: int, kind: int, obj: object) -> None:
        self._ep.register(fd, events)
        self._handlers[fd] = (kind, obj)

    def _forget(self, sock: socket.socket) -> None:
        """Stop watching a socket and close it once the current batch is done."""
        fd = sock.fileno()
        if fd >= 0 and self._handlers.pop(fd, None) is not None:
            try:
                self._ep.unregister(fd)
            except OSError:
                pass
        self._graveyard.append(sock)

    def stop(self) -> None:
        """From any thread: make run() return soon."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def stats(self) -> dict[str, int]:
        s = self.core.stats()
        s.update(self.stats_extra)
        s.update(tcp_pumps=len(self._pumps), tcp_connecting=len(self._connecting), pipes=self.pool.live)
        if self.gate is not None:
            s.update(gate_flows=len(self.gate), gate_pending=self.gate.pending)
        return s

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        next_housekeeping = self.clock() + HOUSEKEEPING
        handlers = self._handlers
        while not self._stopping:
            events = self._ep.poll(0 if self._ready else HOUSEKEEPING, 512)
            for fd, ev in events:
                entry = handlers.get(fd)
                if entry is None:
                    continue
                kind, obj = entry
                try:
                    if kind == _PUMP:
                        self._run_pump(obj)
                    elif kind == _TUN:
                        self._on_tun()
                    elif kind == _UDP:
                        self._on_udp(obj)
                    elif kind == _CONNECT:
                        self._on_connect(fd)
                    elif kind == _LISTEN:
                        self._on_accept(obj)
                    elif kind == _ECHO_SOCK:
                        self._on_echo(obj)
                    elif kind == _WAKE:
                        try:
                            os.read(self._wake_r, 64)
                        except BlockingIOError:
                            pass
                except Exception:
                    self._internal_error(kind, obj)
            if self._ready:
                ready, self._ready = self._ready, {}
                for pump in ready:
                    self._run_pump(pump)
            if self._graveyard:
                self._bury()
            now = self.clock()
            if now >= next_housekeeping:
                next_housekeeping = now + HOUSEKEEPING
                try:
                    self._housekeeping(now)
                except Exception:
                    self._internal_error(None, None)
                self._bury()

    def _bury(self) -> None:
        for sock in self._graveyard:
            try:
                sock.close()
            except OSError:
                pass
        self._graveyard.clear()

    def _internal_error(self, kind, obj) -> None:
        """A bug met by some input: count it, drop what it touched, go on."""
        self.stats_extra["internal_errors"] += 1
        if self.stats_extra["internal_errors"] <= 3:
            self.warn("tunrelay: internal error (flow dropped): "
                      + traceback.format_exc().strip().splitlines()[-1])
        if kind == _PUMP and isinstance(obj, Pump):
            self._end_pump(obj, abort=True)

    def close(self) -> None:
        """After run() returned, in the same thread or after join: free everything."""
        for pump in list(self._pumps):
            self._end_pump(pump, abort=True)
        for sock, _flow, _ in self._connecting.values():
            self._graveyard.append(sock)
        for sock, _ in self._awaiting.values():
            self._graveyard.append(sock)
        self._graveyard.extend(self._udp.values())
        self._graveyard.extend(e.sock for e in self._echo.values())
        self._connecting.clear()
        self._awaiting.clear()
        self._udp.clear()
        self._echo.clear()
        self._bury()
        self.pool.close()
        self._ep.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the TUN ------------------------------------------------------------------------------
    def _write_tun(self, data) -> None:
        try:
            os.write(self.tun_fd, data)
        except OSError:
            self.stats_extra["tun_write_errors"] += 1

    def _on_tun(self) -> None:
        fd, buf, mv = self.tun_fd, self._buf, self._mv
        core, gate = self.core, self.gate
        now = self.clock()
        for _ in range(TUN_BATCH):
            try:
                n = os.readv(fd, (buf,))
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN):
                    return
                raise
            frame = mv[:n]
            if gate is not None and n > 30 and _is_tcp(buf):
                self._gate_frame(frame, now)
                continue
            ev = core.from_tun(frame, now)
            if ev is None:
                continue
            t = type(ev)
            if t is WriteTun:
                self._write_tun(ev.data)
            elif t is UdpSend:
                self._udp_send(ev, now)
            elif t is TcpConnect:
                self._start_connect(ev.flow.target, ev.flow.tport, ev.flow, now)
            elif t is EchoSend:
                self._echo_send(ev)

    def _gate_frame(self, frame: memoryview, now: float) -> None:
        pkt = parse_frame(frame, True)
        if type(pkt) is not Packet or pkt.proto != TCP:
            if type(pkt) is Packet:  # TCP behind IPv6 extension headers: rare, the core drops it
                self.core.from_tun(frame, now)
            else:
                self.counters.drop(pkt)
            return
        out = self.gate.from_tun(pkt, now)
        t = type(out)
        if t is Connect:
            self._start_connect(out.flow.target, out.flow.tport, out.flow, now)
        elif t is Drop:
            self.counters.drop(out)
        else:
            self._write_tun(out)

    # -- TCP: connecting out ------------------------------------------------------------------
    def _start_connect(self, target: bytes, port: int, flow, now: float) -> None:
        try:
            s = socket.socket(address_family(target), socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:  # out of fds or memory: tell the child now
            self._connect_result(None, flow, CONNECT_ERRORS.get(exc.errno, "host"), now)
            return
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.outbound is not None:
                self.outbound.bind(s, target)
            err = s.connect_ex(_sockaddr(target, port))
        except OSError as exc:
            err = exc.errno or errno.EHOSTUNREACH
        if err == errno.EINPROGRESS:
            self._register(s.fileno(), EPOLLOUT, _CONNECT, s)
            self._connecting[s.fileno()] = (s, flow, now + CONNECT_TIMEOUT)
        elif err == 0:
            self._connect_result(s, flow, None, now)
        else:
            self._graveyard.append(s)
            self._connect_result(None, flow, CONNECT_ERRORS.get(err, "host"), now)

    def _on_connect(self, fd: int) -> None:
        entry = self._connecting.pop(fd, None)
        if entry is None:
            return
        s, flow, _ = entry
        self._handlers.pop(fd, None)
        self._ep.unregister(fd)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        now = self.clock()
        if err:
            self._graveyard.append(s)
            self._connect_result(None, flow, CONNECT_ERRORS.get(err, "host"), now)
        else:
            self._connect_result(s, flow, None, now)

    def _connect_result(self, s: socket.socket | None, flow, failure: str | None, now: float) -> None:
        if type(flow) is GateFlow:
            if failure is not None:
                out = self.gate.failed(flow, failure)
            else:
                out = self.gate.connected(flow, now)
                if out is None:
                    self._graveyard.append(s)
                else:
                    flow.upstream = s
            if out is not None:
                self._write_tun(out)
            return
        if failure is not None:
            ev = self.core.tcp_failed(flow, failure)
        else:
            ev = self.core.tcp_connected(flow, now)
            if ev is None:
                self._graveyard.append(s)
            else:
                self._awaiting[flow.id] = (s, now + ACCEPT_TIMEOUT)
        if ev is not None:
            self._write_tun(ev.data)

    # -- TCP: accepting in the sandbox -------------------------------------------------------
    def _on_accept(self, listener: socket.socket) -> None:
        for _ in range(SOCKET_BATCH):
            try:
                c, peer = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of fds: let the child's connection wait in the
                    # backlog; housekeeping re-arms the listener.
                    self._ep.modify(listener.fileno(), 0)
                    self.stats_extra["pump_limit"] += 1
                    return
                continue  # ECONNABORTED and the like: that one is gone
            c.setblocking(False)
            up = self._match_accepted(c, peer)
            if up is None:
                self.stats_extra["accept_unmatched"] += 1
                _reset(c)
                self._graveyard.append(c)
                continue
            sock, tag = up
            if len(self._pumps) >= self.max_pumps:
                self.stats_extra["pump_limit"] += 1
                _reset(c)
                _reset(sock)
                self._graveyard.extend((c, sock))
                continue
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._start_pump(c, sock, tag)

    def _match_accepted(self, c: socket.socket, peer: tuple):
        """The host socket connected for this accepted connection, and a tag."""
        family = c.family
        if self.gate is None:
            flow = self.core.tcp_flow_for_peer(socket.inet_pton(family, peer[0]), peer[1])
            if flow is None:
                return None
            entry = self._awaiting.pop(flow.id, None)
            return None if entry is None else (entry[0], flow)
        local = c.getsockname()
        key = (socket.inet_pton(family, peer[0]), peer[1], socket.inet_pton(family, local[0]), local[1])
        flow = self.gate.take(key)
        if flow is None or flow.upstream is None:
            return None
        return flow.upstream, None

    def _start_pump(self, c: socket.socket, up: socket.socket, tag) -> None:
        pump = Pump(c, up, self.pool, tag, self._graveyard)
        self._pumps[pump] = None
        if isinstance(tag, TcpFlow):
            self._pump_of_flow[tag.id] = pump
        self.stats_extra["tcp_relayed"] += 1
        self._register(c.fileno(), PUMP_EVENTS, _PUMP, pump)
        self._register(up.fileno(), PUMP_EVENTS, _PUMP, pump)
        self._run_pump(pump)

    def _run_pump(self, pump: Pump) -> None:
        if pump.run():
            self._ready[pump] = None
        elif pump.closed:
            self._end_pump(pump)

    def _end_pump(self, pump: Pump, abort: bool = False) -> None:
        if pump not in self._pumps:
            return
        del self._pumps[pump]
        self._ready.pop(pump, None)
        for s in (pump.a, pump.b):
            fd = s.fileno()
            if fd >= 0 and self._handlers.pop(fd, None) is not None:
                self._ep.unregister(fd)
        if isinstance(pump.tag, TcpFlow):
            self._pump_of_flow.pop(pump.tag.id, None)
        if abort:
            pump.abort()
        else:
            pump.close()

    # -- UDP ----------------------------------------------------------------------------------
    def _udp_send(self, ev: UdpSend, now: float) -> None:
        flow = ev.flow
        s = self._udp.get(flow.id)
        if s is None:
            try:
                s = socket.socket(address_family(flow.target), socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            except OSError:
                self.core.forget(flow)
                self.counters.add("udp_socket_error")
                return
            try:
                if self.outbound is not None:
                    self.outbound.bind(s, flow.target)
                s.connect(_sockaddr(flow.target, flow.tport))
            except OSError as exc:
                s.close()
                self.core.forget(flow)
                out = self.core.udp_error(flow, DATAGRAM_ERRORS.get(exc.errno, "host"))
                if out is not None:
                    self._write_tun(out.data)
                return
            self._udp[flow.id] = s
            self._register(s.fileno(), EPOLLIN, _UDP, flow)
        for d in ev.datagrams:
            try:
                s.send(d)
            except BlockingIOError:
                self.counters.add("udp_send_full")
            except OSError as exc:
                out = self.core.udp_error(flow, DATAGRAM_ERRORS.get(exc.errno, "host"))
                if out is not None:
                    self._write_tun(out.data)
                break

    def _on_udp(self, flow) -> None:
        s = self._udp.get(flow.id)
        if s is None:
            return
        core = self.core
        now = self.clock()
        for _ in range(SOCKET_BATCH):
            try:
                data = s.recv(65535)
            except BlockingIOError:
                return
            except OSError as exc:
                out = core.udp_error(flow, DATAGRAM_ERRORS.get(exc.errno, "host"))
                if out is not None:
                    self._write_tun(out.data)
                continue
            out = core.udp_from_host(flow, data, now)
            if out is not None:
                self._write_tun(out.data)
            elif core.udp.by_id(flow.id) is not flow:
                self._close_udp(flow)
                return

    def _close_udp(self, flow) -> None:
        s = self._udp.pop(flow.id, None)
        if s is not None:
            self._forget(s)

    # -- ICMP echo ----------------------------------------------------------------------------
    def _echo_send(self, ev: EchoSend) -> None:
        flow = ev.flow
        e = self._echo.get(flow.id)
        if e is None:
            family = address_family(flow.target)
            try:
                opened = self.icmp.open(family, _sockaddr(flow.target, 0))
            except OSError as exc:
                self.core.forget(flow)
                out = self.core.echo_error(flow, ev.seq, DATAGRAM_ERRORS.get(exc.errno, "host"))
                if out is not None:
                    self._write_tun(out.data)
                return
            if opened is None:  # the host allows neither kind of ICMP socket
                self.core.forget(flow)
                self.counters.add("icmp_unavailable")
                if not self._icmp_warned and self.icmp.problem:
                    self._icmp_warned = True
                    self.warn(f"tunrelay cannot relay ping: {self.icmp.problem}")
                out = self.core.echo_error(flow, ev.seq, "admin")
                if out is not None:
                    self._write_tun(out.data)
                return
            sock, raw = opened
            e = EchoSocket(sock, raw, (flow.id * 7919) & 0xFFFF, family == socket.AF_INET6)
            self._echo[flow.id] = e
            self._register(sock.fileno(), EPOLLIN, _ECHO_SOCK, flow)
        e.last_seq = ev.seq
        typ = 128 if e.v6 else 8
        if e.raw and not e.v6:
            from .checksum import checksum

            ck = checksum(ev.payload, (typ << 8) + e.ident + ev.seq)
            msg = _ECHO.pack(typ, 0, ck, e.ident, ev.seq) + bytes(ev.payload)
        else:
            # ping sockets fill in identifier and checksum; raw ICMPv6
            # sockets compute the checksum (RFC 3542 3.1)
            msg = _ECHO.pack(typ, 0, 0, e.ident, ev.seq) + bytes(ev.payload)
        try:
            e.sock.send(msg)
        except BlockingIOError:
            self.counters.add("echo_send_full")
        except OSError as exc:
            out = self.core.echo_error(flow, ev.seq, DATAGRAM_ERRORS.get(exc.errno, "host"))
            if out is not None:
                self._write_tun(out.data)

    def _on_echo(self, flow) -> None:
        e = self._echo.get(flow.id)
        if e is None:
            return
        now = self.clock()
        reply = 129 if e.v6 else 0
        for _ in range(SOCKET_BATCH):
            try:
                data = e.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as exc:
                out = self.core.echo_error(flow, e.last_seq, DATAGRAM_ERRORS.get(exc.errno, "host"))
                if out is not None:
                    self._write_tun(out.data)
                continue
            if e.raw and not e.v6:
                data = data[(data[0] & 0x0F) * 4:] if data else data
            if len(data) < 8:
                continue
            typ, _code, _ck, ident, seq = _ECHO.unpack_from(data)
            if typ != reply or (e.raw and ident != e.ident):
                continue  # a raw socket sees every ICMP message from its peer
            out = self.core.echo_from_host(flow, seq, memoryview(data)[8:], now)
            if out is not None:
                self._write_tun(out.data)
            elif self.core.echo.by_id(flow.id) is not flow:
                self._close_echo(flow)
                return

    def _close_echo(self, flow) -> None:
        e = self._echo.pop(flow.id, None)
        if e is not None:
            self._forget(e.sock)

    # -- housekeeping -------------------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        for closed in self.core.expire(now):
            flow = closed.flow
            if isinstance(flow, TcpFlow):
                entry = self._awaiting.pop(flow.id, None)
                if entry is not None:
                    self._graveyard.append(entry[0])
                pump = self._pump_of_flow.get(flow.id)
                if pump is not None:  # evicted while busy: end both sides
                    self._end_pump(pump, abort=True)
            elif flow.proto == UDP:
                self._close_udp(flow)
            else:
                self._close_echo(flow)
        # connects past their deadline fail as "host unreachable"
        while self._connecting:
            fd, (s, flow, deadline) = next(iter(self._connecting.items()))
            if deadline > now:
                break
            del self._connecting[fd]
            self._forget(s)
            self._connect_result(None, flow, "timeout", now)
        while self._awaiting:
            flow_id, (s, deadline) = next(iter(self._awaiting.items()))
            if deadline > now:
                break
            del self._awaiting[flow_id]
            self._graveyard.append(s)
        if self.gate is not None:
            for flow, out in self.gate.expire(now):
                if out is not None:
                    self._write_tun(out)
                if flow.upstream is not None:
                    self._graveyard.append(flow.upstream)
                    flow.upstream = None
        for s in self.listeners:  # re-arm listeners paused for lack of fds
            try:
                self._ep.modify(s.fileno(), EPOLLIN)
            except OSError:
                pass


def _is_tcp(buf: bytearray) -> bool:
    """Peek at a vnet-prefixed frame: does it carry TCP (no extension headers)?"""
    v = buf[10] >> 4
    return (v == 4 and buf[19] == TCP) or (v == 6 and buf[16] == TCP)


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
