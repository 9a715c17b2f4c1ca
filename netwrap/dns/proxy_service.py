"""The DNS proxy's I/O: its sockets and threads, carrying out what netwrap.dns.proxy decides.

The command's side lives in the sandbox: transparent UDP and TCP listeners
on its loopback, which nftables hands every DNS flow of the command to
(netwrap.dns.intercept), and raw sockets that send each UDP answer back
from the address and port the command asked (a UDP socket can only send
from the address it is bound to). Init opens them during setup
(open_in_sandbox) and passes them to the parent, which owns them from then on.

The upstream side lives in the parent, in the host's network namespace:
queries go from the host straight to the server that answers them
(netwrap.dns.intercept.choose_upstream), not through the backend, so a
backend's own DNS quirks never matter and a resolver of one family answers
queries the command sent in the other.

UDP runs on one thread (one core per upstream server: random ids, answers
accepted only from that server). Each TCP connection gets a thread of its
own (bounded), relays the client's bytes upstream as they come and cuts the
answers into messages (netwrap.dns.stream) to learn from each before passing
it on. `on_learn` runs before the answer it came from is handed back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

import attrs

from netwrap.dns import proxy as core
from netwrap.dns import stream
from netwrap.dns.message import DNSFormatError
from netwrap.linux import tproxy
from netwrap.linux.commands import debug
from netwrap.linux.loopthread import LoopThread

if TYPE_CHECKING:
    from netwrap.sandbox.calls import SandboxCalls

MAX_DATAGRAM = 65535
# Upstream sockets per family, each bound to its own kernel-chosen port; every
# query leaves from one drawn at random, so an off-path forger must guess the
# port as well as the random 16-bit id. A bound on the fds the proxy holds.
UPSTREAM_SOCKETS = 16
MAX_UPSTREAMS = 256  # distinct servers with a core at once; idle ones make room
MAX_TCP = 64  # TCP connections served at once; more are closed at once
TCP_IDLE = 10.0  # seconds without a byte either way end a TCP connection
CONNECT_TIMEOUT = 5.0
STOP_TIMEOUT = 2.0  # stop() without a deadline: the loop gets this long to end
FAMILIES = (socket.AF_INET, socket.AF_INET6)


@attrs.frozen(kw_only=True)
class SandboxSockets:
    """The proxy's sockets in the sandbox, by address family."""

    udp: dict[int, socket.socket]
    tcp: dict[int, socket.socket]
    raw: dict[int, socket.socket]


def open_in_sandbox(calls: SandboxCalls, stack: contextlib.ExitStack) -> SandboxSockets:
    """Init opens them as root of the sandbox; each is closed when `stack` is."""
    out: dict[str, dict[int, socket.socket]] = {"udp": {}, "tcp": {}, "raw": {}}
    for family in FAMILIES:
        loopback = tproxy.LOOPBACK[family]
        opened = []
        try:
            for kind, type_, proto, bind, listen, options in (
                ("udp", socket.SOCK_DGRAM, 0, (loopback, 0), None, tproxy.listener_options(family, origdst=True)),
                ("tcp", socket.SOCK_STREAM, 0, (loopback, 0), 64, tproxy.listener_options(family)),
                ("raw", socket.SOCK_RAW, socket.IPPROTO_RAW, None, None, []),
            ):
                s = calls.socket(family, type_ | socket.SOCK_CLOEXEC, proto, bind=bind, listen=listen,
                                 options=options)
                stack.callback(s.close)
                opened.append((kind, s))
        except OSError as exc:
            if family == socket.AF_INET:
                raise
            # A kernel without IPv6 (ipv6.disable=1): the command has no IPv6 DNS to take over.
            debug(f"DNS proxy: no IPv6 listeners in the sandbox ({exc})")
            continue
        for kind, s in opened:
            out[kind][family] = s
    return SandboxSockets(**out)


def raw_reply(raw: dict[int, socket.socket]) -> Callable[[tuple[str, int], tuple[str, int], bytes], None]:
    """Send a UDP payload from `source` to `dest` through the sandbox's raw sockets."""
    from netwrap.backends.tunrelay.packets import build_udp  # the same datagrams tunrelay writes

    def send(source: tuple[str, int], dest: tuple[str, int], payload: bytes) -> None:
        src = ipaddress.ip_address(source[0])
        dst = ipaddress.ip_address(dest[0].split("%")[0])
        packet = build_udp(src.packed, dst.packed, source[1], dest[1], payload)
        family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
        raw[family].sendto(packet, (str(dst), 0))

    return send


@attrs.frozen
class _Client:
    """Who asked, and which address and port they asked (the answer's source)."""

    peer: tuple[str, int]
    asked: tuple[str, int]


class DnsProxyService:
    def __init__(self, *, udp: dict[int, socket.socket], tcp: dict[int, socket.socket],
                 reply: Callable[[tuple[str, int], tuple[str, int], bytes], None],
                 choose: Callable[[str], str], on_learn: Callable[[core.Learn], None],
                 upstream_port: int = 53, refuse: Callable[[str], bool] | None = None,
                 device: str | None = None) -> None:
        """udp/tcp: the listeners by family; reply(source, dest, payload) sends
        a UDP answer back; choose(address asked) names the upstream server;
        refuse: the cores' name filter (--dns-allowed-only, see netwrap.dns.proxy);
        device: --iface, the interface queries leave the host by (SO_BINDTODEVICE),
        except those to a resolver on the host's loopback, which is no way out."""
        self._udp = udp
        self._tcp = tcp
        self._reply = reply
        self._choose = choose
        self._on_learn = on_learn
        self._port = upstream_port
        self._refuse = refuse
        self._device = device.encode() if device is not None else None
        self._cores: dict[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int], core.DnsProxy] = {}
        # (family, bound to the device) -> sockets, each on its own port.
        self._upstream: dict[tuple[int, bool], list[socket.socket]] = {}
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()  # _connections and on_learn, shared with the TCP threads
        self.errors: list[str] = []
        self.dropped = 0  # answers from a server with no core
        self._stack = contextlib.ExitStack()
        self._loop: LoopThread | None = None
        self._stopped = False
        self._ended = True

    # -- running --------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve on threads of its own; returns once it is serving."""
        if self._loop is not None or self._stopped:
            return
        for family in FAMILIES:
            for bound in (False, True) if self._device is not None else (False,):
                pool = []
                try:
                    for _ in range(UPSTREAM_SOCKETS):
                        s = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
                        self._stack.callback(s.close)
                        if bound:
                            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self._device)
                        s.bind(("0.0.0.0" if family == socket.AF_INET else "::", 0))  # its port, now
                        pool.append(s)
                except OSError:  # e.g. a host without IPv6
                    continue
                self._upstream[(family, bound)] = pool
        handlers: dict[int, Callable[[], None]] = {}
        for s in self._udp.values():
            s.setblocking(False)
            handlers[s.fileno()] = lambda s=s: self._on_query(s)
        for s in self._tcp.values():
            s.setblocking(False)
            handlers[s.fileno()] = lambda s=s: self._on_connection(s)
        for pool in self._upstream.values():
            for s in pool:
                handlers[s.fileno()] = lambda s=s: self._on_answer(s)
        self._loop = LoopThread(name="netwrap-dns-proxy", handlers=handlers, timeout=self._timeout,
                                tick=self._expire, on_error=self.errors.append)
        self._loop.start()

    def stop(self, deadline: float | None = None) -> bool:
        """Stop serving by `deadline` (time.monotonic(); None: STOP_TIMEOUT from now), end the TCP
        connections and close the host-side sockets (the sandbox's are the
        caller's). False if the thread had to be abandoned. Idempotent."""
        if self._stopped:
            return self._ended
        self._stopped = True
        if self._loop is not None:
            self._ended = self._loop.stop(time.monotonic() + STOP_TIMEOUT if deadline is None else deadline)
            if not self._ended:
                self.errors.append("the DNS proxy did not stop in time")
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # its thread wakes up, closes it and ends
        self._stack.close()
        dropped = {str(k[0]): dict(c.dropped) for k, c in self._cores.items() if c.dropped}
        if dropped or self.dropped:
            debug(f"DNS proxy: dropped {dropped}, {self.dropped} answers from servers never asked")
        return self._ended

    def _timeout(self) -> float | None:
        deadlines = [d for d in (c.next_deadline() for c in self._cores.values()) if d is not None]
        return min(deadlines) - time.monotonic() if deadlines else None

    def _expire(self) -> None:
        now = time.monotonic()
        for c in self._cores.values():
            c.expire(now)

    # -- UDP ------------------------------------------------------------------------------------

    def _core(self, server: str) -> core.DnsProxy:
        key = (ipaddress.ip_address(server), self._port)
        found = self._cores.get(key)
        if found is None:
            if len(self._cores) >= MAX_UPSTREAMS:
                idle = next((k for k, c in self._cores.items() if not c.pending), None)
                if idle is not None:
                    del self._cores[idle]
            found = self._cores[key] = core.DnsProxy(resolver=(server, self._port), refuse=self._refuse)
        return found

    def _on_query(self, listener: socket.socket) -> None:
        while True:
            try:
                data, ancdata, _, peer = listener.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(32))
            except OSError:  # BlockingIOError: all read
                return
            asked = tproxy.original_destination(ancdata)
            if asked is None:
                continue
            server = self._choose(asked[0])
            c = self._core(server)
            client = _Client(peer=(peer[0], peer[1]), asked=asked)
            self._carry_out(c, c.query(data, client, time.monotonic()))

    def _on_answer(self, upstream: socket.socket) -> None:
        while True:
            try:
                data, sender = upstream.recvfrom(MAX_DATAGRAM)
            except OSError:  # all read; or e.g. ICMP unreachable: the client times out as usual
                return
            try:
                key = (ipaddress.ip_address(sender[0].split("%")[0]), sender[1])
            except ValueError:
                continue
            c = self._cores.get(key)
            if c is None:
                self.dropped += 1
                continue
            self._carry_out(c, c.answer(data, sender))

    def _routed(self, server: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Does a query to `server` leave by the --iface device?"""
        return self._device is not None and not server.is_loopback

    def _carry_out(self, c: core.DnsProxy, actions: list[core.Action]) -> None:
        for action in actions:
            if isinstance(action, core.SendUpstream):
                server = (str(c.resolver[0]), c.resolver[1])
                family = socket.AF_INET if c.resolver[0].version == 4 else socket.AF_INET6
                try:
                    pool = self._upstream[(family, self._routed(c.resolver[0]))]
                    pool[secrets.randbelow(len(pool))].sendto(action.data, server)
                except (OSError, KeyError):
                    self._carry_out(c, c.upstream_failed(action))
            elif isinstance(action, core.SendToClient):
                client: Hashable = action.client
                assert isinstance(client, _Client)
                try:
                    self._reply(client.asked, client.peer, action.data)
                except OSError:
                    pass  # the client is gone
            elif isinstance(action, core.Learn):
                self._learn(action)

    def _learn(self, learned: core.Learn) -> None:
        with self._lock:
            self._on_learn(learned)

    # -- TCP ------------------------------------------------------------------------------------

    def _on_connection(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # all accepted
                return
            with self._lock:
                if self._stopped or len(self._connections) >= MAX_TCP:
                    conn.close()
                    continue
                self._connections.add(conn)
            threading.Thread(target=self._serve_tcp, args=(conn,), name="netwrap-dns-tcp", daemon=True).start()

    def _serve_tcp(self, conn: socket.socket) -> None:
        upstream = None
        try:
            asked = conn.getsockname()[0]  # TPROXY: the address the command connected to
            server = self._choose(asked)
            address = ipaddress.ip_address(server)
            upstream = socket.socket(socket.AF_INET if address.version == 4 else socket.AF_INET6,
                                     socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            if self._routed(address):
                upstream.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self._device)
            upstream.settimeout(CONNECT_TIMEOUT)
            upstream.connect((server, self._port))
            self._relay_tcp(conn, upstream)
        except OSError as exc:
            debug(f"DNS proxy: a TCP connection ended: {exc}")
        finally:
            if upstream is not None:
                upstream.close()
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def _relay_tcp(self, conn: socket.socket, upstream: socket.socket) -> None:
        answers = stream.Deframer()
        conn.setblocking(True)
        upstream.settimeout(None)
        while True:
            readable, _, _ = select.select([conn, upstream], [], [], TCP_IDLE)
            if not readable:
                return
            if conn in readable:
                data = conn.recv(65536)
                if not data:
                    return
                upstream.sendall(data)  # queries go on as they come; the server reads the framing
            if upstream in readable:
                data = upstream.recv(65536)
                if not data:
                    return
                try:
                    messages = answers.feed(data)
                except DNSFormatError:
                    return
                for message in messages:
                    try:
                        learned = core.learned_from(message)
                    except DNSFormatError:
                        learned = None  # passed on unread, as over UDP
                    if learned is not None:
                        self._learn(learned)
                    conn.sendall(stream.frame(message))
