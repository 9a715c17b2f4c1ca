"""The world's DNS servers: an authoritative one and a forwarding one.

Both speak UDP (answering from the queried address, see udpd) and TCP (each
message framed by a two-byte length, several per connection, RFC 1035 4.2.2).
The authoritative server answers from a zone (dnswire.resolve); the forwarder
is the host's stub resolver on 127.0.0.53, relaying to the world's DNS the way
systemd-resolved relays to its upstream.  Every query is logged before the
answer goes out.  stdlib only.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Callable

from . import dnswire, udpd
from .jsonlog import JsonLog
from .sockaddr import clean
from .tcpserver import DualStackServer

FORWARD_TIMEOUT = 3.0
TCP_IDLE_TIMEOUT = 10.0
MAX_TCP_MESSAGE = 65535

# (message, log fields) -> reply or None; implementations log themselves.
Responder = Callable[[bytes, dict], "bytes | None"]


def authoritative(zone: Callable[[], dict[str, dict[str, list[str]]]], log: JsonLog) -> Responder:
    """Answers from zone() (name -> type -> values), asked afresh for each query."""
    def respond(message: bytes, fields: dict) -> bytes | None:
        reply, query, rcode = dnswire.answer(zone(), message)
        values = dnswire.parse_response(reply).answers if reply and query else []
        log.write(**fields, qname=query.name if query else None,
                  qtype=query.type_name if query else None,
                  rcode=dnswire.rcode_name(rcode), answers=values)
        return reply

    return respond


def forwarding(upstream: tuple[str, int], log: JsonLog) -> Responder:
    def respond(message: bytes, fields: dict) -> bytes | None:
        try:
            query = dnswire.parse_query(message)
        except dnswire.DNSFormatError:
            query = None
        reply: bytes | None = None
        error = None
        try:
            if fields["proto"] == "tcp":
                reply = _ask_tcp(upstream, message)
            else:
                reply = _ask_udp(upstream, message)
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        rcode, values = None, []
        if reply is not None:
            try:
                parsed = dnswire.parse_response(reply)
                rcode, values = dnswire.rcode_name(parsed.rcode), parsed.answers
            except dnswire.DNSFormatError:
                rcode = "unparseable"
        elif query is not None:
            # The upstream failed: tell the client now rather than let it time out.
            reply = dnswire.build_response(query, dnswire.SERVFAIL)
            rcode = "SERVFAIL"
        log.write(**fields, qname=query.name if query else None,
                  qtype=query.type_name if query else None,
                  upstream=upstream[0], rcode=rcode, answers=values, error=error)
        return reply

    return respond


def _ask_udp(upstream: tuple[str, int], message: bytes) -> bytes:
    with socket.socket(socket.AF_INET6 if ":" in upstream[0] else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(FORWARD_TIMEOUT)
        sock.connect(upstream)
        sock.send(message)
        while True:
            reply = sock.recv(udpd.MAX_DATAGRAM)
            if reply[:2] == message[:2]:  # same query id, else a stray: keep waiting
                return reply


def _ask_tcp(upstream: tuple[str, int], message: bytes) -> bytes:
    with socket.create_connection(upstream, timeout=FORWARD_TIMEOUT) as sock:
        sock.sendall(struct.pack("!H", len(message)) + message)
        reply = _read_frame(sock)
        if reply is None:
            raise ConnectionError("upstream closed without an answer")
        return reply


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks, missing = [], size
    while missing:
        chunk = sock.recv(missing)
        if not chunk:
            return None
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _read_frame(sock: socket.socket) -> bytes | None:
    header = _read_exact(sock, 2)
    if header is None:
        return None
    return _read_exact(sock, struct.unpack("!H", header)[0])


def serve_udp(sock: socket.socket, respond: Responder, *, threaded: bool) -> None:
    """Answer DNS over UDP on `sock`; `threaded` for slow (forwarding) answers."""
    port = sock.getsockname()[1]

    def answer(sock: socket.socket, datagram: udpd.Datagram) -> None:
        fields = {"proto": "udp", "peer": datagram.peer_host, "peer_port": datagram.peer_port,
                  "local": clean(datagram.local), "port": port}
        reply = respond(datagram.data, fields)
        if reply is not None:
            udpd.reply(sock, datagram, reply)

    def handle(sock: socket.socket, datagram: udpd.Datagram) -> None:
        if not threaded:
            answer(sock, datagram)
            return

        def guarded() -> None:
            try:
                answer(sock, datagram)
            except Exception as error:
                print(f"dns udp: {type(error).__name__}: {error}", file=sys.stderr, flush=True)

        threading.Thread(target=guarded, daemon=True).start()

    udpd.serve(sock, handle, name=f"dns-udp-{port}")


class _TcpDnsHandler(socketserver.BaseRequestHandler):
    server: "TcpDnsServer"

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(TCP_IDLE_TIMEOUT)
        local, port = sock.getsockname()[:2]
        fields = {"proto": "tcp", "peer": clean(self.client_address[0]),
                  "peer_port": self.client_address[1], "local": clean(local), "port": port}
        try:
            while True:
                message = _read_frame(sock)
                if message is None:
                    return
                reply = self.server.respond(message, dict(fields))
                if reply is None:
                    return
                sock.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return  # idle timeout or reset: the client has gone


class TcpDnsServer(DualStackServer):
    def __init__(self, address: tuple[str, int], respond: Responder) -> None:
        self.respond = respond
        super().__init__(address, _TcpDnsHandler)
