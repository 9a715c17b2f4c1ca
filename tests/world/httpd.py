"""The world's web server: HTTP and HTTPS with a few fixed paths.

  /hello     -> "hello from the world\n"
  /echo      -> the request line and headers (and body, if any) as text
  /bytes/N   -> N bytes of the bytegen stream (SHA-256 computable by tests)
  otherwise  -> 404

Every request is logged (one JSON line) before the response is sent.  Any
method is accepted, so proxy and method tests need no special cases.
stdlib only.
"""

from __future__ import annotations

import socket
import ssl
import sys
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from . import bytegen
from .jsonlog import JsonLog
from .sockaddr import clean
from .tcpserver import DualStackServer

HELLO = b"hello from the world\n"
MAX_BODY = 16 * 1024 * 1024  # bodies beyond this are drained, not kept
MAX_BYTES = 64 * 1024**3
HANDSHAKE_TIMEOUT = 10.0


class WorldHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "netwrap-world/1"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection ends, its thread with it
    server: "HttpServer"

    def setup(self) -> None:
        super().setup()
        # Headers and body are two writes; without NODELAY, Nagle plus the
        # client's delayed ACK would add 40 ms to every small response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __getattr__(self, name: str):
        # BaseHTTPRequestHandler dispatches to do_<METHOD>; take them all.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args) -> None:
        pass  # the JSON log is the log; stderr stays for real errors

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # not parsed: end the connection after replying
            return b""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        kept = bytearray()
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            if len(kept) < MAX_BODY:
                kept += chunk
            length -= len(chunk)
        return bytes(kept)

    def _serve(self) -> None:
        body = self._read_body()
        local, port = self.connection.getsockname()[:2]
        path = urlsplit(self.path).path or "/"
        self.server.log.write(
            listener=self.server.kind, port=port, peer=clean(self.client_address[0]),
            peer_port=self.client_address[1], local=clean(local), request=self.requestline,
            method=self.command, path=path, host=self.headers.get("Host"),
            headers=[[name, value] for name, value in self.headers.items()], body_size=len(body),
        )
        if path == "/hello":
            self._reply(200, HELLO)
        elif path == "/echo":
            text = self.requestline + "\n" + "".join(f"{k}: {v}\n" for k, v in self.headers.items())
            self._reply(200, text.encode("utf-8", "replace") + (b"\n" + body if body else b""))
        elif path.startswith("/bytes/") and path[7:].isdigit() and int(path[7:]) <= MAX_BYTES:
            self._stream(int(path[7:]))
        else:
            self._reply(404, b"not found\n")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "HEAD":
            return
        for piece in bytegen.chunks(size):
            self.wfile.write(piece)


class HttpServer(DualStackServer):
    def __init__(self, address: tuple[str, int], log: JsonLog, tls: ssl.SSLContext | None = None) -> None:
        self.log = log
        self.tls = tls
        self.kind = "https" if tls else "http"
        super().__init__(address, WorldHandler)

    def finish_request(self, request: socket.socket, client_address) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The handshake runs here, in the connection's own thread, so one slow
        # client cannot hold up accept().
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as error:
            print(f"https: handshake with {client_address[0]} failed: {error}", file=sys.stderr, flush=True)
            return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return context
