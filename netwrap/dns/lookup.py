"""Ask one DNS server for a name's addresses, from the host (no C library, no nsswitch).

Used before the command starts, when a forced resolver (--dns) should answer
the --allow hostnames exactly as it will answer the command: getaddrinfo
would ask the host's resolvers instead. Queries (A and AAAA) leave from a
connected UDP socket, so only the server's own address and port can answer,
under fresh random ids.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import time
from typing import TYPE_CHECKING

from netwrap.dns import message as dnsmsg

if TYPE_CHECKING:
    from netwrap.dns.message import IPAddress

TIMEOUT = 2.0


def addresses(server: str, name: str, *, port: int = 53, timeout: float = TIMEOUT) -> set[IPAddress]:
    """The A and AAAA addresses `server` gives for `name` (CNAMEs followed).

    OSError when the server cannot be reached or does not answer in time;
    ValueError for a name DNS cannot carry. A name that does not exist is
    an empty set.
    """
    ip = ipaddress.ip_address(server)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    qname = name.rstrip(".").lower()
    ids = {}
    while len(ids) < 2:
        ids.setdefault(secrets.randbits(16), (dnsmsg.TYPE_A, dnsmsg.TYPE_AAAA)[len(ids)])
    queries = {ident: dnsmsg.build_query(ident, qname, qtype) for ident, qtype in ids.items()}
    found: dict[IPAddress, None] = {}
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((str(ip), port))
        for query in queries.values():
            s.send(query)
        pending = set(queries)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from {server} within {timeout:g} s")
            s.settimeout(left)
            data = s.recv(65535)
            try:
                answer = dnsmsg.parse_answer(data)
            except dnsmsg.DNSFormatError:
                continue
            if answer.id not in pending or answer.qname != qname:
                continue  # late or forged: wait for the real one
            pending.discard(answer.id)
            for address in answer.addresses_of(qname):
                found[address] = None
    return set(found)
