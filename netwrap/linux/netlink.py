"""The netlink codec every netwrap netlink user shares: framing, attributes, acks.

Building and parsing are pure functions of bytes (linux/netlink.h: struct
nlmsghdr, struct nlattr, struct nlmsgerr); parsers never trust their input:
a short or malformed message raises NetlinkFormatError, never IndexError or
struct.error. The ack bookkeeping is sans-I/O too (AckTracker takes received
datagrams as bytes); request() is the thin layer that sends over a socket and
feeds it what comes back.

The protocol families on top: netwrap.linux.rtnetlink (links, addresses,
routes, rules for tunrelay) and netwrap.linux.nfnetlink (conntrack, NFLOG,
nf_tables sets for the policy).

Why not pyroute2 at run time: its import costs 106-120 ms (any submodule pulls
in the whole package; field notes), and netwrap needs a few small, stable
message kinds. The tests use pyroute2 as the independent oracle.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Optional

import attrs

if TYPE_CHECKING:
    import socket

# linux/netlink.h
NLMSGHDR = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
NLATTR = struct.Struct("=HH")  # struct nlattr: len, type
NLMSGERR_SIZE = 4 + NLMSGHDR.size  # struct nlmsgerr: int error; struct nlmsghdr msg
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ECHO = 0x08
NLM_F_REPLACE = 0x100  # new requests; 0x100 is also NLM_F_ROOT for gets
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_APPEND = 0x800
NLA_F_NESTED = 0x8000
NLA_F_NET_BYTEORDER = 0x4000
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

RECV_SIZE = 65536


class NetlinkFormatError(ValueError):
    """A message that is too short or not what its header says."""


def align(n: int) -> int:
    """NLMSG_ALIGN / NLA_ALIGN: netlink pads messages and attributes to 4 bytes."""
    return (n + 3) & ~3


# --- messages ---------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Message:
    type: int
    flags: int
    seq: int
    payload: bytes  # after the netlink header, without the trailing padding
    pid: int = 0


def message(mtype: int, flags: int, body: bytes, *, seq: int = 0, pid: int = 0) -> bytes:
    """One netlink message: header and body (nlmsg_len counts no trailing padding)."""
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, flags, seq, pid) + body


def iter_messages(data: bytes) -> Iterator[Message]:
    """The netlink messages in one datagram, in order.

    A header whose length is shorter than a header or runs past the datagram,
    or leftover bytes too short for a header, raise NetlinkFormatError.
    """
    offset = 0
    while offset < len(data):
        if offset + NLMSGHDR.size > len(data):
            raise NetlinkFormatError(f"{len(data) - offset} bytes at {offset} are too few for a netlink header")
        length, mtype, flags, seq, pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise NetlinkFormatError(f"netlink message length {length} at {offset} runs past {len(data)}")
        yield Message(type=mtype, flags=flags, seq=seq, pid=pid,
                      payload=bytes(data[offset + NLMSGHDR.size: offset + length]))
        offset += align(length)


# --- attributes -------------------------------------------------------------------------------


def attr(atype: int, data: bytes, *, nested: bool = False) -> bytes:
    """One attribute, padded to 4 bytes; `nested` sets NLA_F_NESTED (data holds attributes)."""
    length = NLATTR.size + len(data)
    return NLATTR.pack(length, atype | (NLA_F_NESTED if nested else 0)) + data + b"\0" * (align(length) - length)


def attr_u32(atype: int, value: int) -> bytes:
    """An attribute holding a host-order u32 (rtnetlink's integers)."""
    return attr(atype, struct.pack("=I", value))


def iter_attributes(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each attribute from `offset` on, in order, repeated types
    included; the type has NLA_F_NESTED and NLA_F_NET_BYTEORDER masked off. A nested
    attribute's payload is itself a run of attributes: iterate it the same way."""
    while offset < len(data):
        if offset + NLATTR.size > len(data):
            raise NetlinkFormatError(f"{len(data) - offset} bytes at {offset} are too few for an attribute")
        length, atype = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > len(data):
            raise NetlinkFormatError(f"attribute length {length} at {offset} runs past {len(data)}")
        yield atype & NLA_TYPE_MASK, bytes(data[offset + NLATTR.size: offset + length])
        offset += align(length)


def attributes(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attribute type -> payload; for a repeated type, the last one wins."""
    return dict(iter_attributes(data, offset))


def find(data: bytes, *path: int) -> Optional[bytes]:
    """The payload at a path of nested attribute types, or None where one is missing."""
    payload: Optional[bytes] = data
    for atype in path:
        payload = attributes(payload).get(atype)
        if payload is None:
            return None
    return payload


# --- errors and acks --------------------------------------------------------------------------


def error_code(msg: Message) -> int:
    """The errno of an NLMSG_ERROR message; 0 is an ack.

    The kernel always sends a whole struct nlmsgerr (the error, then the
    request's header); anything shorter, or a positive error, is malformed
    and raises NetlinkFormatError: it must never pass for an ack.
    """
    if msg.type != NLMSG_ERROR:
        raise NetlinkFormatError(f"message type {msg.type} is not NLMSG_ERROR")
    if len(msg.payload) < NLMSGERR_SIZE:
        raise NetlinkFormatError(f"netlink error message of {len(msg.payload)} bytes, "
                                 f"shorter than struct nlmsgerr ({NLMSGERR_SIZE})")
    (error,) = struct.unpack_from("=i", msg.payload)
    if error > 0:
        raise NetlinkFormatError(f"netlink error message with a positive error {error}")
    return -error


class AckTracker:
    """Sans-I/O bookkeeping of one request's answers (one datagram of one or more messages).

    Every message sent with NLM_F_ACK awaits its ack (NLMSG_ERROR with error 0
    and that message's seq); an error for any seq of the request raises OSError
    with the kernel's errno; other messages carrying one of those seqs are
    replies (e.g. the RTM_NEWLINK answering an RTM_GETLINK). Messages for other
    seqs are late answers to earlier requests and are ignored.
    """

    def __init__(self, request: bytes, what: str) -> None:
        self.what = what
        sent = list(iter_messages(request))
        self._seqs = {m.seq for m in sent}
        self.pending = {m.seq for m in sent if m.flags & NLM_F_ACK}
        self.replies: list[Message] = []

    @property
    def done(self) -> bool:
        return not self.pending

    def feed(self, datagram: bytes) -> None:
        """Take one received datagram; OSError on a refusal or on a malformed answer."""
        try:
            for msg in iter_messages(datagram):
                if msg.seq not in self._seqs:
                    continue
                if msg.type == NLMSG_ERROR:
                    code = error_code(msg)
                    if code:
                        raise OSError(code, f"{self.what}: {os.strerror(code)}")
                    self.pending.discard(msg.seq)
                elif msg.type != NLMSG_DONE:
                    self.replies.append(msg)
        except NetlinkFormatError as exc:
            raise OSError(errno.EBADMSG, f"{self.what}: malformed netlink answer: {exc}") from None


def request(sock: socket.socket, data: bytes, what: str) -> list[Message]:
    """Send a request and read until every message sent with NLM_F_ACK is acked.

    Returns the replies that came with it; OSError with the kernel's errno on a
    refusal (a timeout, when the socket has one, is the socket's own OSError).
    """
    tracker = AckTracker(data, what)
    sock.send(data)
    while not tracker.done:
        tracker.feed(sock.recv(RECV_SIZE))
    return tracker.replies
