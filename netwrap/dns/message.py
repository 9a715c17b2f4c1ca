"""Just enough DNS to read answers: which addresses a response gives for which names.

The policy engine proxies the sandbox's UDP queries to its resolver and,
before handing an answer back, adds its addresses to the sets of allowed
hostnames. Pure code; every input is untrusted (it came from the network
via the backend), so anything malformed is DNSFormatError and the answer is
simply passed on unread.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Union

import attrs

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

HEADER = struct.Struct("!HHHHHH")
TYPE_A, TYPE_CNAME, TYPE_AAAA = 1, 5, 28
CLASS_IN = 1
FLAG_QR = 0x8000
MAX_POINTERS = 64  # compression loops end here


class DNSFormatError(ValueError):
    pass


@attrs.frozen(kw_only=True)
class Answer:
    id: int
    rcode: int
    qname: str | None
    # name -> addresses (A/AAAA records as given), and CNAME name -> target.
    addresses: dict[str, tuple[IPAddress, ...]]
    cnames: dict[str, str]
    # owner name -> the smallest TTL (seconds) of its A, AAAA and CNAME records.
    ttls: dict[str, int] = attrs.field(factory=dict)

    def chain(self) -> list[str]:
        """qname and the names its CNAMEs lead to, in order (loops cut)."""
        names: list[str] = []
        name = self.qname
        while name is not None and name not in names:
            names.append(name)
            name = self.cnames.get(name)
        return names

    def addresses_of(self, name: str) -> tuple[IPAddress, ...]:
        """The addresses this answer gives for `name` (following CNAMEs)."""
        found: list[IPAddress] = []
        seen: set[str] = set()
        while name not in seen:
            seen.add(name)
            found += self.addresses.get(name, ())
            if name not in self.cnames:
                break
            name = self.cnames[name]
        return tuple(dict.fromkeys(found))

    def ttl_of(self, name: str) -> int | None:
        """How long `name`'s addresses stay valid: the smallest TTL on the way
        through its CNAMEs to the address records (None if nothing is known)."""
        ttls: list[int] = []
        seen: set[str] = set()
        while name not in seen:
            seen.add(name)
            if name in self.ttls:
                ttls.append(self.ttls[name])
            if name not in self.cnames:
                break
            name = self.cnames[name]
        return min(ttls) if ttls else None


def message_id(message: bytes) -> int:
    if len(message) < 2:
        raise DNSFormatError("shorter than a DNS id")
    return struct.unpack_from("!H", message)[0]


def with_id(message: bytes, ident: int) -> bytes:
    """The same message with another id (the proxy keeps its own ids unique)."""
    if len(message) < HEADER.size:
        raise DNSFormatError("shorter than a DNS header")
    return struct.pack("!H", ident) + message[2:]


def is_query(message: bytes) -> bool:
    return len(message) >= HEADER.size and not (struct.unpack_from("!H", message, 2)[0] & FLAG_QR)


RCODE_SERVFAIL = 2
RCODE_REFUSED = 5

def build_query(ident: int, name: str, qtype: int) -> bytes:
    """A recursive query (RD set) for `name`, class IN; ValueError for a name DNS cannot carry."""
    labels = [label for label in name.rstrip(".").split(".")]
    wire = b""
    for label in labels:
        raw = label.encode("ascii")  # ValueError (UnicodeEncodeError) for non-ASCII
        if not 0 < len(raw) < 64:
            raise ValueError(f"{name!r}: a label must be 1 to 63 bytes")
        wire += bytes([len(raw)]) + raw
    wire += b"\0"
    if len(wire) > 255:
        raise ValueError(f"{name!r}: longer than 255 bytes")
    return HEADER.pack(ident, 0x0100, 1, 0, 0, 0) + wire + struct.pack("!HH", qtype, CLASS_IN)


def servfail(query: bytes) -> bytes | None:
    """A SERVFAIL reply to `query` (its question kept), or None if it has none we can read."""
    return error_reply(query, RCODE_SERVFAIL)


def error_reply(query: bytes, rcode: int) -> bytes | None:
    """A reply to `query` with this rcode and its one question echoed (no
    records), or None if it has no single question we can read."""
    if not is_query(query):
        return None
    ident, flags, qdcount, *_ = HEADER.unpack_from(query)
    if qdcount != 1:
        return None
    try:
        _, end = _name(query, HEADER.size)
    except DNSFormatError:
        return None
    if end + 4 > len(query):
        return None
    # QR, the query's opcode and RD, RA, and the rcode.
    reply_flags = FLAG_QR | (flags & 0x7900) | 0x0080 | (rcode & 0xF)
    return HEADER.pack(ident, reply_flags, 1, 0, 0, 0) + query[HEADER.size:end + 4]


def question_name(query: bytes) -> str | None:
    """The name a query with exactly one question asks about (lower case, no
    root dot); None when it has another number of questions, is malformed, or
    its name has no one text form: a compressed question, a label holding a
    dot or a byte outside printable ASCII ("a.b" as one label must never pass
    for the name a.b)."""
    if not is_query(query) or HEADER.unpack_from(query)[2] != 1:
        return None
    labels: list[str] = []
    pos = HEADER.size
    while pos < len(query):
        length = query[pos]
        pos += 1
        if length == 0:
            if pos + 4 > len(query):
                return None
            return ".".join(labels)
        if length & 0xC0 or pos + length > len(query):
            return None
        label = query[pos:pos + length]
        if any(b <= 0x20 or b >= 0x7F or b == 0x2E for b in label):
            return None
        labels.append(label.decode("ascii").lower())
        pos += length
    return None


def parse_answer(message: bytes) -> Answer:
    if len(message) < HEADER.size:
        raise DNSFormatError("shorter than a DNS header")
    ident, flags, qdcount, ancount, _ns, _ar = HEADER.unpack_from(message)
    if not flags & FLAG_QR:
        raise DNSFormatError("a query, not a response")
    pos = HEADER.size
    qname = None
    for i in range(qdcount):
        name, pos = _name(message, pos)
        if pos + 4 > len(message):
            raise DNSFormatError("question runs past the message")
        pos += 4
        if i == 0:
            qname = name
    addresses: dict[str, list[IPAddress]] = {}
    cnames: dict[str, str] = {}
    ttls: dict[str, int] = {}
    for _ in range(ancount):
        name, pos = _name(message, pos)
        if pos + 10 > len(message):
            raise DNSFormatError("record header runs past the message")
        rtype, rclass, ttl, rdlength = struct.unpack_from("!HHIH", message, pos)
        pos += 10
        end = pos + rdlength
        if end > len(message):
            raise DNSFormatError("record data runs past the message")
        if rclass == CLASS_IN:
            if rtype == TYPE_A and rdlength == 4:
                addresses.setdefault(name, []).append(ipaddress.IPv4Address(message[pos:end]))
            elif rtype == TYPE_AAAA and rdlength == 16:
                addresses.setdefault(name, []).append(ipaddress.IPv6Address(message[pos:end]))
            elif rtype == TYPE_CNAME:
                target, _ = _name(message, pos)
                cnames[name] = target
            if rtype in (TYPE_A, TYPE_AAAA, TYPE_CNAME):
                # RFC 2181 section 8: a TTL with the top bit set means zero.
                ttl = 0 if ttl & 0x80000000 else ttl
                ttls[name] = min(ttl, ttls.get(name, ttl))
        pos = end
    return Answer(id=ident, rcode=flags & 0xF, qname=qname,
                  addresses={k: tuple(v) for k, v in addresses.items()}, cnames=cnames, ttls=ttls)


def _name(message: bytes, pos: int) -> tuple[str, int]:
    """A (possibly compressed) name at pos, lower case without the root dot; and the position after it."""
    labels: list[str] = []
    end = None
    jumps = 0
    while True:
        if pos >= len(message):
            raise DNSFormatError("name runs past the message")
        length = message[pos]
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(message):
                raise DNSFormatError("compression pointer runs past the message")
            jumps += 1
            if jumps > MAX_POINTERS:
                raise DNSFormatError("compression pointer loop")
            if end is None:
                end = pos + 2
            pos = ((length & 0x3F) << 8) | message[pos + 1]
            continue
        if length & 0xC0:
            raise DNSFormatError(f"unknown label type {length >> 6}")
        pos += 1
        if length == 0:
            break
        if pos + length > len(message):
            raise DNSFormatError("label runs past the message")
        labels.append(message[pos:pos + length].decode("ascii", "replace").lower())
        pos += length
    return ".".join(labels), (end if end is not None else pos)
