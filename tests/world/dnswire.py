"""Just enough of the DNS wire format (RFC 1035) for the world's servers.

One question per message, A and AAAA answers, NXDOMAIN, empty NOERROR for a
known name without the asked type.  Records live TTL seconds unless the
name's zone entry says otherwise ({"A": [...], "TTL": ["5"]}).  Answers point back at the question name
(compression pointer 0xC00C) and echo the question bytes unchanged, so a
client's 0x20 case randomisation survives.  stdlib only: worldd imports this.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

TYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT",
              28: "AAAA", 33: "SRV", 41: "OPT", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
TYPE_CODES = {name: code for code, name in TYPE_NAMES.items()}
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 1, 2, 3, 4
CLASS_IN = 1
HEADER = struct.Struct("!HHHHHH")
TTL = 60

_FLAG_QR = 0x8000
_FLAG_AA = 0x0400
_FLAG_RD = 0x0100
_FLAG_RA = 0x0080


class DNSFormatError(ValueError):
    """The bytes are not a DNS message this module can handle."""


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str  # lower case, no trailing dot ("" for the root)
    qtype: int
    qclass: int
    question: bytes  # the question section exactly as received

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.qtype, str(self.qtype))


def type_name(qtype: int) -> str:
    return TYPE_NAMES.get(qtype, str(qtype))


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, str(rcode))


def parse_query(message: bytes) -> Query:
    """Parse a query with exactly one question; DNSFormatError otherwise."""
    if len(message) < HEADER.size:
        raise DNSFormatError("shorter than a DNS header")
    ident, flags, qdcount, _an, _ns, _ar = HEADER.unpack_from(message)
    if flags & _FLAG_QR:
        raise DNSFormatError("a response, not a query")
    if qdcount != 1:
        raise DNSFormatError(f"{qdcount} questions")
    labels: list[str] = []
    pos = HEADER.size
    while True:
        if pos >= len(message):
            raise DNSFormatError("name runs past the message")
        length = message[pos]
        pos += 1
        if length == 0:
            break
        if length & 0xC0:
            # Queries carry no compression; refusing it keeps the parser trivial.
            raise DNSFormatError("compressed or extended label in a question")
        label = message[pos : pos + length]
        if len(label) != length:
            raise DNSFormatError("label runs past the message")
        labels.append(label.decode("ascii", "replace").lower())
        pos += length
    if pos + 4 > len(message):
        raise DNSFormatError("question without type and class")
    qtype, qclass = struct.unpack_from("!HH", message, pos)
    pos += 4
    return Query(ident, flags, ".".join(labels), qtype, qclass, message[HEADER.size : pos])


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("ascii")
            if len(raw) > 63:
                raise ValueError(f"label too long: {label!r}")
            out += bytes([len(raw)]) + raw
    return bytes(out + b"\0")


def build_query(ident: int, name: str, qtype: int, *, rd: bool = True) -> bytes:
    """A query message (used by tests and the harness, never sent off-world)."""
    flags = _FLAG_RD if rd else 0
    return HEADER.pack(ident, flags, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)


def _rdata(qtype: int, value: str) -> bytes:
    if qtype == 1:
        return socket.inet_pton(socket.AF_INET, value)
    if qtype == 28:
        return socket.inet_pton(socket.AF_INET6, value)
    raise ValueError(f"cannot encode type {qtype}")


def build_response(query: Query, rcode: int, values: Sequence[str] = (), *, ttl: int = TTL) -> bytes:
    """Answer `query` with `rcode` and one record of its type per value, each living `ttl` seconds."""
    flags = _FLAG_QR | (query.opcode << 11) | _FLAG_AA | (query.flags & _FLAG_RD) | _FLAG_RA | rcode
    answers = b""
    for value in values:
        rdata = _rdata(query.qtype, value)
        answers += struct.pack("!HHHIH", 0xC00C, query.qtype, CLASS_IN, ttl, len(rdata)) + rdata
    return HEADER.pack(query.id, flags, 1, len(values), 0, 0) + query.question + answers


def build_error(message: bytes, rcode: int) -> bytes | None:
    """A bare error reply (no question) for a message we could not parse."""
    if len(message) < HEADER.size:
        return None
    ident, flags, *_ = HEADER.unpack_from(message)
    if flags & _FLAG_QR:
        return None  # never answer a response: that is how reflection loops start
    out_flags = _FLAG_QR | (flags & 0x7800) | (flags & _FLAG_RD) | _FLAG_RA | rcode
    return HEADER.pack(ident, out_flags, 0, 0, 0, 0)


def resolve(zone: dict[str, dict[str, list[str]]], query: Query) -> tuple[int, list[str]]:
    """(rcode, values) for `query` from `zone` (name -> type name -> values)."""
    if query.opcode != 0 or query.qclass != CLASS_IN:
        return NOTIMP, []
    records = zone.get(query.name)
    if records is None:
        return NXDOMAIN, []
    if query.qtype not in (1, 28):
        return NOERROR, []
    return NOERROR, list(records.get(query.type_name, []))


def answer(zone: dict[str, dict[str, list[str]]], message: bytes) -> tuple[bytes | None, Query | None, int]:
    """The reply to `message`, the parsed query (None if unparseable), the rcode."""
    try:
        query = parse_query(message)
    except DNSFormatError:
        return build_error(message, FORMERR), None, FORMERR
    rcode, values = resolve(zone, query)
    ttl = int(zone.get(query.name, {}).get("TTL", [TTL])[0])
    return build_response(query, rcode, values, ttl=ttl), query, rcode


@dataclass(frozen=True)
class Response:
    id: int
    rcode: int
    answers: list[str]  # A/AAAA values, in order


def parse_response(message: bytes) -> Response:
    """Enough of a response to log it and to check it in tests."""
    if len(message) < HEADER.size:
        raise DNSFormatError("shorter than a DNS header")
    ident, flags, qdcount, ancount, _ns, _ar = HEADER.unpack_from(message)
    pos = HEADER.size
    for _ in range(qdcount):
        pos = _skip_name(message, pos) + 4
    answers: list[str] = []
    for _ in range(ancount):
        pos = _skip_name(message, pos)
        if pos + 10 > len(message):
            raise DNSFormatError("record header runs past the message")
        rtype, _rclass, _ttl, rdlength = struct.unpack_from("!HHIH", message, pos)
        pos += 10
        rdata = message[pos : pos + rdlength]
        if len(rdata) != rdlength:
            raise DNSFormatError("rdata runs past the message")
        if rtype == 1 and rdlength == 4:
            answers.append(socket.inet_ntop(socket.AF_INET, rdata))
        elif rtype == 28 and rdlength == 16:
            answers.append(socket.inet_ntop(socket.AF_INET6, rdata))
        pos += rdlength
    return Response(ident, flags & 0xF, answers)


def _skip_name(message: bytes, pos: int) -> int:
    while True:
        if pos >= len(message):
            raise DNSFormatError("name runs past the message")
        length = message[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length
        if length == 0:
            return pos
