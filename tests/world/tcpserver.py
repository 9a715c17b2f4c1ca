"""A threaded TCP server base that binds like the world needs.

'::' is one dual-stack socket (IPV6_V6ONLY off), so v4 clients show up as
v4-mapped peers (sockaddr.clean turns them back).  No name lookups anywhere:
http.server's HTTPServer.server_bind calls getfqdn(), which would send a DNS
query from a daemon; this base never does.  stdlib only.
"""

from __future__ import annotations

import socket
import socketserver

from .sockaddr import family_of


class DualStackServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # load tests (wrk) open hundreds of connections at once

    def __init__(self, address: tuple[str, int], handler: type[socketserver.BaseRequestHandler]) -> None:
        self.address_family = family_of(address[0] or "::")
        super().__init__(address, handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            dual = self.server_address[0] in ("::", "")
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
        socketserver.TCPServer.server_bind(self)
        # What http.server's handlers expect, without its reverse lookup.
        self.server_name = self.server_address[0]
        self.server_port = self.server_address[1]

    @property
    def port(self) -> int:
        return self.server_address[1]
