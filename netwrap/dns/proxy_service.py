"""The DNS proxy's I/O: its sockets and its thread, carrying out what netwrap.dns.proxy decides.

One proxy per resolver: a listener on the sandbox's loopback, where nftables
redirects the sandbox's UDP queries to that resolver, and UPSTREAM_SOCKETS
upstream sockets that send them on, each query from one picked at random.
All live in the sandbox's network namespace, so the caller opens them (a
sandbox call during setup) through `open_socket`; this service owns them from
then on. The upstream sockets are bound to kernel-chosen ports and not
connected: the backend may add its routes only after it is ready.

Why a pool: an off-path forger must guess the query's id (random, 16 bits)
and its source port. No new socket can be opened in the sandbox once setup is
over (init no longer serves calls), so the port is drawn per query from
sockets opened in advance: 4 bits more than one fixed port.

Actions are carried out in the order the core gives them; `on_learn` runs on
this thread before the answer it came from is handed back.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from netwrap.dns import proxy as core
from netwrap.linux.commands import debug
from netwrap.loopthread import LoopThread

if TYPE_CHECKING:
    from netwrap.dns.message import IPAddress

MAX_DATAGRAM = core.MAX_MESSAGE
# Upstream sockets per resolver, each on its own random port (see above); a
# bound on the fds the proxy holds.
UPSTREAM_SOCKETS = 16


class _Endpoint:
    """One resolver's proxy: its core and its two sockets."""

    def __init__(self, resolver: IPAddress, port: int, listen: socket.socket, upstreams: list[socket.socket],
                 refuse: Callable[[str], bool] | None = None) -> None:
        self.address = (str(resolver), port)
        self.core = core.DnsProxy(resolver=self.address, refuse=refuse)
        self.listen = listen
        self.upstreams = upstreams
        self.port: int = listen.getsockname()[1]


class DnsProxyService:
    def __init__(self, *, open_socket: Callable[..., socket.socket], mark: int | None,
                 on_learn: Callable[[core.Learn], None], refuse: Callable[[str], bool] | None = None) -> None:
        """open_socket(family, type, *, bind=None, options=()) opens a socket
        where the proxy serves; `mark` (SO_MARK) tags its upstream queries;
        `refuse` is the core's name filter (netwrap.dns.proxy.DnsProxy)."""
        self._open_socket = open_socket
        self._mark = mark
        self._on_learn = on_learn
        self._refuse = refuse
        self.endpoints: list[_Endpoint] = []
        self.errors: list[str] = []
        self._stack = contextlib.ExitStack()
        self._loop: LoopThread | None = None
        self._stopped = False
        self._ended = True

    def add(self, resolver: IPAddress, port: int = 53) -> int:
        """Open a proxy for `resolver`; the loopback port it listens on."""
        family = socket.AF_INET if resolver.version == 4 else socket.AF_INET6
        loopback, anywhere = ("127.0.0.1", "0.0.0.0") if resolver.version == 4 else ("::1", "::")
        listen = self._open_socket(family, socket.SOCK_DGRAM, bind=(loopback, 0))
        self._stack.callback(listen.close)
        listen.setblocking(False)
        options = [(socket.SOL_SOCKET, socket.SO_MARK, self._mark)] if self._mark is not None else []
        upstreams = []
        for _ in range(UPSTREAM_SOCKETS):
            upstream = self._open_socket(family, socket.SOCK_DGRAM, bind=(anywhere, 0), options=options)
            self._stack.callback(upstream.close)
            upstream.setblocking(False)
            upstreams.append(upstream)
        endpoint = _Endpoint(resolver, port, listen, upstreams, self._refuse)
        self.endpoints.append(endpoint)
        return endpoint.port

    # -- running --------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve on a thread of its own; returns once it is serving."""
        if self._loop is not None or self._stopped or not self.endpoints:
            return
        handlers: dict[int, Callable[[], None]] = {}
        for e in self.endpoints:
            handlers[e.listen.fileno()] = lambda e=e: self._on_query(e)
            for upstream in e.upstreams:
                handlers[upstream.fileno()] = lambda e=e, u=upstream: self._on_answer(e, u)
        self._loop = LoopThread(name="netwrap-dns-proxy", handlers=handlers, timeout=self._timeout,
                                tick=self._expire, on_error=self.errors.append)
        self._loop.start()

    def stop(self, deadline: float | None = None) -> bool:
        """Stop serving by `deadline` (time.monotonic(); None: now) and close the
        sockets. False if the thread had to be abandoned. Idempotent."""
        if self._stopped:
            return self._ended
        self._stopped = True
        if self._loop is not None:
            self._ended = self._loop.stop(time.monotonic() if deadline is None else deadline)
            if not self._ended:
                self.errors.append("the DNS proxy did not stop in time")
        self._stack.close()
        for e in self.endpoints:
            if e.core.dropped or e.core.unreadable:
                debug(f"DNS proxy for {e.address[0]}: dropped {dict(e.core.dropped)}, "
                      f"{e.core.unreadable} answers passed on unread")
        return self._ended

    def _timeout(self) -> float | None:
        deadlines = [d for d in (e.core.next_deadline() for e in self.endpoints) if d is not None]
        return min(deadlines) - time.monotonic() if deadlines else None

    def _expire(self) -> None:
        now = time.monotonic()
        for e in self.endpoints:
            e.core.expire(now)

    def _on_query(self, e: _Endpoint) -> None:
        while True:
            try:
                data, client = e.listen.recvfrom(MAX_DATAGRAM)
            except OSError:  # BlockingIOError: all read
                return
            self._carry_out(e, e.core.query(data, client, time.monotonic()))

    def _on_answer(self, e: _Endpoint, upstream: socket.socket) -> None:
        while True:
            try:
                data, sender = upstream.recvfrom(MAX_DATAGRAM)
            except OSError:  # all read; or e.g. ICMP unreachable: the client times out as usual
                return
            self._carry_out(e, e.core.answer(data, sender))

    def _carry_out(self, e: _Endpoint, actions: list[core.Action]) -> None:
        for action in actions:
            if isinstance(action, core.SendUpstream):
                try:
                    e.upstreams[secrets.randbelow(len(e.upstreams))].sendto(action.data, e.address)
                except OSError:
                    self._carry_out(e, e.core.upstream_failed(action))
            elif isinstance(action, core.SendToClient):
                try:
                    e.listen.sendto(action.data, action.client)
                except OSError:
                    pass  # the client is gone
            elif isinstance(action, core.Learn):
                self._on_learn(action)
