"""--publish relayed by netwrap itself: host listeners whose connections are made again inside the sandbox, from the client's address.

Used by tunrelay (TCP and UDP), and by pasta for UDP where its build loses
the replies (the distribution's 2023 build).

The client connects to a socket of netwrap's on the host.  The connection
into the sandbox is then opened by a transparent socket (IP_TRANSPARENT)
bound to the client's own address and port, so the server inside sees the
real peer.  Such a socket must be created in the sandbox's network
namespace, and after setup the sandbox's init no longer takes calls: a small
process (SocketMaker) forked at start joins the sandbox's user and network
namespaces (the caller owns the user namespace, so it may) and makes one
socket per request, passing it back over a socketpair.

The server's replies are addressed to the client, which the sandbox would
route out through the TUN.  Instead, nftables (render_ruleset) gives every
connection of these sockets a conntrack mark bit, and its reply packets that
bit as their packet mark; policy routing (fwmark MARK -> table ROUTE_TABLE:
local default dev lo) then delivers them locally, to the transparent socket.
Verified for TCP and UDP, IPv4 and IPv6, in a network namespace.

Bytes: TCP is spliced kernel to kernel (pump.Pump); UDP is a flow per
client (host socket + inner socket), ended after UDP_IDLE seconds of quiet.
One thread runs Publisher.run, with its own epoll; nothing is shared with the
engine's thread.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import time
from typing import TYPE_CHECKING, Callable

import threading

from netwrap.backends import PUBLISHED_CT_MARK
from netwrap.errors import NetwrapError
from netwrap.linux import syscalls

from netwrap.backends.tunrelay.pump import PUMP_EVENTS_HINT, PipePool, Pump

if TYPE_CHECKING:
    import contextlib

    from netwrap.backends import Target
    from netwrap.config import PublishedPort
    from netwrap.linux import rtnetlink
    from netwrap.sandbox.calls import SandboxCalls

TABLE_NAME = "netwrap_publish"
MARK = PUBLISHED_CT_MARK  # one bit: the policy's and the fast path's marks keep working
ROUTE_TABLE = 0x4E58
RULE_PRIORITY = 99  # before the fast path's rule (100) and the main table
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
UDP_IDLE = 60.0
CONNECT_TIMEOUT = 10.0
MAX_FLOWS = 1024  # TCP connections and UDP flows, each
HOUSEKEEPING = 1.0
_REQUEST = struct.Struct("=ii")  # family, type
_ERROR = struct.Struct("=i")  # errno, 0 with an fd

_LISTENER, _HOST_UDP, _CONNECTING, _PUMP, _INNER_UDP, _WAKE = range(6)


def render_ruleset(mark: int = MARK) -> str:
    """nftables for the sandbox: replies to the transparent sockets go back to them through lo."""
    m = f"0x{mark:08x}"
    return "\n".join([
        f"table inet {TABLE_NAME} {{",
        "\tchain output {",
        "\t\ttype route hook output priority mangle; policy accept;",
        f"\t\tmeta mark & {m} == {m} ct mark set ct mark | {m}",
        f"\t\tct direction reply ct mark & {m} == {m} meta mark set meta mark | {m}",
        "\t}",
        "}",
        "",
    ])


class SocketMaker:
    """A process in the sandbox's namespaces that makes transparent, marked sockets for the parent."""

    def __init__(self, *, netns_fd: int, userns_fd: int | None, mark: int = MARK) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the maker: only os, socket and syscalls from here on
            status = 1
            try:
                ours.close()
                syscalls.set_pdeathsig(signal.SIGKILL)
                if os.getppid() != parent:
                    os._exit(0)
                if userns_fd is not None:
                    syscalls.setns(userns_fd, syscalls.CLONE_NEWUSER)
                syscalls.setns(netns_fd, syscalls.CLONE_NEWNET)
                _serve(theirs, mark)
                status = 0
            finally:
                os._exit(status)
        theirs.close()
        self.pid: int | None = pid
        self._sock = ours

    def make(self, family: int, kind: int) -> socket.socket:
        try:
            self._sock.send(_REQUEST.pack(family, kind))
            data, fds, _flags, _addr = socket.recv_fds(self._sock, _ERROR.size, 1)
        except OSError as exc:
            raise OSError(exc.errno or errno.EPIPE, "the sandbox's socket maker is gone") from None
        if fds:
            return socket.socket(fileno=fds[0])
        err = _ERROR.unpack(data)[0] if len(data) == _ERROR.size else errno.EPIPE
        raise OSError(err, os.strerror(err))

    def close(self) -> None:
        self._sock.close()  # EOF: the maker exits
        if self.pid is not None:
            for _ in range(100):
                done, _ = os.waitpid(self.pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.01)
            else:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            self.pid = None


def _serve(sock: socket.socket, mark: int) -> None:
    while True:
        data = sock.recv(_REQUEST.size)
        if len(data) != _REQUEST.size:
            return  # EOF: the parent is done
        family, kind = _REQUEST.unpack(data)
        try:
            s = socket.socket(family, kind | socket.SOCK_CLOEXEC)
        except OSError as exc:
            sock.send(_ERROR.pack(exc.errno or errno.EINVAL))
            continue
        try:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            else:
                s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
            socket.send_fds(sock, [_ERROR.pack(0)], [s.fileno()])
        except OSError as exc:
            sock.send(_ERROR.pack(exc.errno or errno.EINVAL))
        finally:
            s.close()


def open_host_sockets(published: "PublishedPort") -> list[socket.socket]:
    """The host sockets of one --publish: its HOST_IP, or both wildcards (IPv6 only if the host has it)."""
    kind = socket.SOCK_STREAM if published.proto == "tcp" else socket.SOCK_DGRAM
    if published.host_ip is not None:
        wanted = [(socket.AF_INET6 if ":" in published.host_ip else socket.AF_INET, published.host_ip)]
    else:
        wanted = [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    out: list[socket.socket] = []
    try:
        for family, address in wanted:
            try:
                s = socket.socket(family, kind | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            except OSError:
                continue  # no IPv6 on this host
            out.append(s)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, published.host_port))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and published.host_ip is None:
                    out.pop().close()
                    continue
                raise NetwrapError(f"--publish {published.describe()}: host port {published.host_port}/"
                                   f"{published.proto}: {exc.strerror}") from None
            if kind == socket.SOCK_STREAM:
                s.listen(512)
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


class _Listener:
    __slots__ = ("sock", "target")

    def __init__(self, sock: socket.socket, target: tuple) -> None:
        self.sock, self.target = sock, target


class _UdpFlow:
    __slots__ = ("host", "client", "inner", "last")

    def __init__(self, host: _Listener, client: tuple, inner: socket.socket, now: float) -> None:
        self.host, self.client, self.inner, self.last = host, client, inner, now


class Publisher:
    """The I/O loop of every published port (one thread)."""

    def __init__(self, *, sockets: list[tuple[socket.socket, tuple]], maker: SocketMaker,
                 warn: Callable[[str], None] = lambda m: None, clock: Callable[[], float] = time.monotonic) -> None:
        """sockets: (host socket, (sandbox address, sandbox port) its flows go to)."""
        self.maker = maker
        self.warn = warn
        self.clock = clock
        self.pool = PipePool()
        self._ep = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._handlers: dict[int, tuple[int, object]] = {}
        self._stopping = False
        self._graveyard: list[socket.socket] = []
        self._connecting: dict[int, tuple[socket.socket, socket.socket, float]] = {}
        self._pumps: dict[Pump, None] = {}
        self._udp: dict[tuple[int, tuple], _UdpFlow] = {}
        self.listeners = [_Listener(s, target) for s, target in sockets]
        self.stats = {"tcp": 0, "udp_flows": 0, "failed": 0}
        self._register(self._wake_r, select.EPOLLIN, _WAKE, None)
        for listener in self.listeners:
            kind = _LISTENER if listener.sock.type == socket.SOCK_STREAM else _HOST_UDP
            self._register(listener.sock.fileno(), select.EPOLLIN, kind, listener)

    def _register(self, fd: int, events: int, kind: int, obj: object) -> None:
        self._ep.register(fd, events)
        self._handlers[fd] = (kind, obj)

    def _forget(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd >= 0 and self._handlers.pop(fd, None) is not None:
            self._ep.unregister(fd)
        self._graveyard.append(sock)

    def stop(self) -> None:
        """From any thread: make run() return soon."""
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def run(self) -> None:
        next_housekeeping = self.clock() + HOUSEKEEPING
        ready: dict[Pump, None] = {}
        while not self._stopping:
            for fd, _ev in self._ep.poll(0 if ready else HOUSEKEEPING, 256):
                entry = self._handlers.get(fd)
                if entry is None:
                    continue
                kind, obj = entry
                try:
                    if kind == _PUMP:
                        self._run_pump(obj, ready)
                    elif kind == _LISTENER:
                        self._on_accept(obj)
                    elif kind == _CONNECTING:
                        self._on_connected(fd, ready)
                    elif kind == _HOST_UDP:
                        self._on_host_udp(obj)
                    elif kind == _INNER_UDP:
                        self._on_inner_udp(obj)
                except Exception as exc:  # one flow's trouble never ends the loop
                    self.stats["failed"] += 1
                    self.warn(f"tunrelay: --publish: {type(exc).__name__}: {exc}")
            if ready:
                again, ready = ready, {}
                for pump in again:
                    self._run_pump(pump, ready)
            now = self.clock()
            if now >= next_housekeeping:
                next_housekeeping = now + HOUSEKEEPING
                self._housekeeping(now)
            for sock in self._graveyard:
                sock.close()
            self._graveyard.clear()

    # -- TCP ----------------------------------------------------------------------------------
    def _on_accept(self, listener: _Listener) -> None:
        for _ in range(64):
            try:
                client, peer = listener.sock.accept()
            except BlockingIOError:
                return
            except OSError:
                continue
            if len(self._pumps) + len(self._connecting) >= MAX_FLOWS:
                _reset(client)
                client.close()
                continue
            client.setblocking(False)
            try:
                inner = self._inner(client.family, socket.SOCK_STREAM, peer)
                err = inner.connect_ex(listener.target)
            except OSError as exc:
                self.stats["failed"] += 1
                self.warn(f"tunrelay: --publish: cannot open the connection into the sandbox: {exc.strerror}")
                _reset(client)
                client.close()
                continue
            if err not in (0, errno.EINPROGRESS):
                self.stats["failed"] += 1
                _reset(client)
                client.close()
                inner.close()
                continue
            self._register(inner.fileno(), select.EPOLLOUT, _CONNECTING, None)
            self._connecting[inner.fileno()] = (inner, client, self.clock() + CONNECT_TIMEOUT)

    def _inner(self, family: int, kind: int, peer: tuple) -> socket.socket:
        """A socket in the sandbox from the client's address (its port too, when free there)."""
        inner = self.maker.make(family, kind)
        try:
            inner.setblocking(False)
            try:
                inner.bind(peer[:2])
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                inner.bind((peer[0], 0))
        except BaseException:
            inner.close()
            raise
        return inner

    def _on_connected(self, fd: int, ready: dict) -> None:
        inner, client, _ = self._connecting.pop(fd)
        self._handlers.pop(fd, None)
        self._ep.unregister(fd)
        if inner.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            # Nothing listens inside (or it refused): the client sees a reset, as from a closed port.
            _reset(client)
            self._graveyard.extend((inner, client))
            return
        for s in (inner, client):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pump = Pump(inner, client, self.pool, None, self._graveyard)
        self._pumps[pump] = None
        self.stats["tcp"] += 1
        self._register(inner.fileno(), PUMP_EVENTS_HINT, _PUMP, pump)
        self._register(client.fileno(), PUMP_EVENTS_HINT, _PUMP, pump)
        self._run_pump(pump, ready)

    def _run_pump(self, pump: Pump, ready: dict) -> None:
        if pump.run():
            ready[pump] = None
        elif pump.closed:
            self._end_pump(pump)

    def _end_pump(self, pump: Pump) -> None:
        if pump not in self._pumps:
            return
        del self._pumps[pump]
        for s in (pump.a, pump.b):
            fd = s.fileno()
            if fd >= 0 and self._handlers.pop(fd, None) is not None:
                self._ep.unregister(fd)
        pump.close()

    # -- UDP ----------------------------------------------------------------------------------
    def _on_host_udp(self, host: _Listener) -> None:
        now = self.clock()
        for _ in range(64):
            try:
                data, client = host.sock.recvfrom(65535)
            except BlockingIOError:
                return
            except OSError:
                continue  # an ICMP error for an earlier reply
            key = (host.sock.fileno(), client[:2])
            flow = self._udp.get(key)
            if flow is None:
                if len(self._udp) >= MAX_FLOWS:
                    continue
                try:
                    inner = self._inner(host.sock.family, socket.SOCK_DGRAM, client)
                    inner.connect(host.target)
                except OSError as exc:
                    self.stats["failed"] += 1
                    self.warn(f"tunrelay: --publish: cannot open the flow into the sandbox: {exc.strerror}")
                    continue
                flow = _UdpFlow(host, client, inner, now)
                self._udp[key] = flow
                self.stats["udp_flows"] += 1
                self._register(inner.fileno(), select.EPOLLIN, _INNER_UDP, flow)
            flow.last = now
            try:
                flow.inner.send(data)
            except OSError:
                pass  # nothing listens inside yet: datagrams may be lost

    def _on_inner_udp(self, flow: _UdpFlow) -> None:
        flow.last = self.clock()
        for _ in range(64):
            try:
                data = flow.inner.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                continue  # ICMP port unreachable from inside: the client retries or gives up
            try:
                flow.host.sock.sendto(data, flow.client)
            except OSError:
                pass

    # -- time ---------------------------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        for fd, (inner, client, deadline) in list(self._connecting.items()):
            if deadline <= now:
                del self._connecting[fd]
                self._forget(inner)
                _reset(client)
                self._graveyard.append(client)
        for key, flow in list(self._udp.items()):
            if now - flow.last > UDP_IDLE:
                del self._udp[key]
                self._forget(flow.inner)

    def close(self) -> None:
        """After run() returned: free everything (the host sockets included)."""
        for pump in list(self._pumps):
            pump.abort()
        self._pumps.clear()
        for inner, client, _ in self._connecting.values():
            self._graveyard.extend((inner, client))
        self._connecting.clear()
        self._graveyard.extend(flow.inner for flow in self._udp.values())
        self._udp.clear()
        self._graveyard.extend(listener.sock for listener in self.listeners)
        for sock in self._graveyard:
            sock.close()
        self._graveyard.clear()
        self.pool.close()
        self._ep.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


# -- setup, for a backend's start (the sandbox's setup calls are still valid) --------------------

STOP_TIMEOUT = 2.0


def setup_routing(calls: "SandboxCalls", rtnl: "rtnetlink.Rtnl", nft: str | None) -> None:
    """Replies to the transparent sockets are delivered to them through lo: the ruleset, rules and routes."""
    from netwrap.linux import rtnetlink
    from netwrap.linux.commands import searched

    if nft is None:
        raise NetwrapError(f"--publish needs nft here, not found in {searched()} (install the 'nftables' package)")
    calls.run([nft, "-f", "-"], input=render_ruleset())
    for family in (socket.AF_INET, socket.AF_INET6):
        rtnl.request(lambda s: rtnetlink.add_rule(family, fwmark=MARK, fwmask=MARK, table=ROUTE_TABLE,
                                                  priority=RULE_PRIORITY, seq=s),
                     "add the --publish routing rule")
        rtnl.request(lambda s: rtnetlink.add_route(family, oif=1, table=ROUTE_TABLE, kind=rtnetlink.RTN_LOCAL, seq=s),
                     "add the --publish local route")


def start(target: "Target", published: "list[PublishedPort]", sandbox: tuple[str, str],
          stack: "contextlib.ExitStack", warn: Callable[[str], None]) -> Publisher:
    """Host sockets for `published`, the socket maker in the sandbox, the publisher's thread; all undone by `stack`.

    sandbox: the sandbox's IPv4 and IPv6 addresses, where the connections go.
    """
    sockets = []
    for p in published:
        for sock in open_host_sockets(p):
            stack.callback(sock.close)  # the publisher closes them too; a second close is harmless
            address = sandbox[1] if sock.family == socket.AF_INET6 else sandbox[0]
            sockets.append((sock, (address, p.sandbox_port)))
    userns_fd = None if target.rootful else os.open(f"/proc/{target.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        maker = SocketMaker(netns_fd=target.netns_fd, userns_fd=userns_fd)
    finally:
        if userns_fd is not None:
            os.close(userns_fd)
    stack.callback(maker.close)
    publisher = Publisher(sockets=sockets, maker=maker, warn=warn)
    stack.callback(publisher.close)
    thread = threading.Thread(target=publisher.run, name="netwrap-publish", daemon=True)
    thread.start()
    stack.callback(thread.join, STOP_TIMEOUT)
    stack.callback(publisher.stop)
    return publisher
