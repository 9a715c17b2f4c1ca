"""UDP servers that answer from the address the client queried.

In the internet namespace every address is local (an AnyIP route), so one
socket bound to the wildcard receives datagrams for 8.8.8.8 and 2606:4700::1111
alike; a reply must then leave *from that address*, or the client's connected
socket drops it.  IP_PKTINFO / IPV6_RECVPKTINFO tell us the destination of each
datagram, and the same control message on sendmsg() sets the reply's source.
A wildcard '::' means two sockets, 0.0.0.0 and an IPv6-only '::', so each
family gets its own plain pktinfo (no v4-mapped cases).  stdlib only.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .sockaddr import clean, family_of

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16si")  # addr, ifindex
_CMSG_SPACE = 256
MAX_DATAGRAM = 65535


@dataclass(frozen=True)
class Datagram:
    data: bytes
    peer: tuple  # the sockaddr as received, to reply to
    local: str  # the address the client sent to
    ifindex: int

    @property
    def peer_host(self) -> str:
        return clean(self.peer[0])

    @property
    def peer_port(self) -> int:
        return self.peer[1]


def open_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound UDP sockets for (host, port); '::' or '' means both families."""
    if host in ("::", ""):
        first = _bind("0.0.0.0", port)
        # Port 0: the IPv6 socket takes the port the IPv4 one got.
        return [first, _bind("::", first.getsockname()[1])]
    return [_bind(host, port)]


def _bind(host: str, port: int) -> socket.socket:
    family = family_of(host)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        # IPv6 accepts a pktinfo source only if it is a configured address;
        # AnyIP addresses are not, unless the socket may use non-local ones.
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind((host, port))
    return sock


def receive(sock: socket.socket) -> Datagram:
    data, ancdata, _flags, peer = sock.recvmsg(MAX_DATAGRAM, _CMSG_SPACE)
    local, ifindex = sock.getsockname()[0], 0
    for level, kind, payload in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            ifindex, _spec_dst, addr = _IN_PKTINFO.unpack_from(payload)
            local = socket.inet_ntop(socket.AF_INET, addr)
        elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
            addr, ifindex = _IN6_PKTINFO.unpack_from(payload)
            local = socket.inet_ntop(socket.AF_INET6, addr)
    return Datagram(data, peer, local, ifindex)


def reply(sock: socket.socket, request: Datagram, data: bytes) -> None:
    """Send `data` to the peer of `request`, from the address it was sent to."""
    if sock.family == socket.AF_INET6:
        info = _IN6_PKTINFO.pack(socket.inet_pton(socket.AF_INET6, request.local), request.ifindex)
        cmsg = (socket.IPPROTO_IPV6, IPV6_PKTINFO, info)
    else:
        info = _IN_PKTINFO.pack(0, socket.inet_pton(socket.AF_INET, request.local), b"\0" * 4)
        cmsg = (socket.IPPROTO_IP, IP_PKTINFO, info)
    sock.sendmsg([data], [cmsg], 0, request.peer)


Handler = Callable[[socket.socket, Datagram], None]


def serve(sock: socket.socket, handler: Handler, *, name: str) -> threading.Thread:
    """Run `handler` for each datagram of `sock` in a daemon thread."""

    def loop() -> None:
        while True:
            try:
                datagram = receive(sock)
            except OSError as error:
                print(f"{name}: receive failed: {error}", file=sys.stderr, flush=True)
                continue
            try:
                handler(sock, datagram)
            except Exception as error:  # one bad datagram must not stop the server
                print(f"{name}: {type(error).__name__}: {error}", file=sys.stderr, flush=True)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def echo_handler(log) -> Handler:
    """UDP echo (RFC 862): the datagram back, logged."""

    def handle(sock: socket.socket, datagram: Datagram) -> None:
        port = sock.getsockname()[1]
        log.write(proto="udp", service="echo", peer=datagram.peer_host, peer_port=datagram.peer_port,
                  local=clean(datagram.local), port=port, size=len(datagram.data))
        reply(sock, datagram, datagram.data)

    return handle
