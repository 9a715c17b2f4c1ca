"""netfilter netlink on the shared codec: bytes in, values out (and requests as bytes).

Just what the policy engine needs, no more: conntrack events (new, update,
destroy, with counters, mark and timestamps), NFLOG packets (the prefix and
the packet), adding elements to an nftables set, flushing the conntrack
table. Framing, attributes and acks are netwrap.linux.netlink's (re-exported
here under the names the policy runtime uses). Pure code: no sockets here
(netwrap.policy.runtime does the I/O), so every parser is tested on bytes and
never trusts them: a short or malformed message raises NetlinkFormatError,
never IndexError or struct.error.

pyroute2 could parse these too, but its import costs 106-120 ms (field notes);
the formats are small and stable (linux/netfilter/nfnetlink*.h, nf_tables.h).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable
from typing import Optional, Union

import attrs

from netwrap.linux.netlink import (NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NLMSG_ERROR, Message,
                                   NetlinkFormatError, attr, attributes, error_code, iter_messages, message)

# The codec's names the policy runtime reaches through this module stay part of its interface.
__all__ = [
    "NLM_F_ACK", "NLMSG_ERROR", "Message", "NetlinkFormatError", "error_code", "iter_messages",
    "NETLINK_NETFILTER", "CT_EVENT_GROUPS", "TCP_CLOSING_STATES", "nfgen", "nfgen_payload",
    "nflog_bind", "ct_flush", "nft_add_elements", "Endpoint", "CtEvent", "parse_ct_event",
    "LoggedPacket", "parse_nflog", "parse_ip_packet",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

NETLINK_NETFILTER = 12

# struct nfgenmsg: family, version, res_id (big endian)
NFGEN = struct.Struct("=BBH")

# subsystems
NFNL_SUBSYS_CTNETLINK = 1
NFNL_SUBSYS_ULOG = 4
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11

# conntrack
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3
CT_EVENT_GROUPS = (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_UPDATE - 1)) | (
    1 << (NFNLGRP_CONNTRACK_DESTROY - 1))
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID, CTA_TIMESTAMP = 8, 9, 10, 12, 20
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 7, 8, 9
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP = 1, 2
# enum tcp_conntrack: the states after which a TCP flow is over.
TCP_CLOSING_STATES = frozenset({4, 5, 6, 7, 8})  # FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE

# nflog
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_QTHRESH = 1, 2, 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PACKET_HDR, NFULA_PAYLOAD, NFULA_PREFIX = 1, 9, 10

# nf_tables
NFT_MSG_NEWSETELEM = 12
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_TIMEOUT = 4  # u64, big endian, milliseconds
NFTA_SET_ELEM_EXPIRATION = 5  # the same: how long from now
NFTA_DATA_VALUE = 1
NFPROTO_INET = 1

_IPV6_OPTION_HEADERS = frozenset({0, 43, 60})

PROTO_NAMES = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_ICMP: "icmp",
               socket.IPPROTO_ICMPV6: "icmpv6"}


# --- struct nfgenmsg ---------------------------------------------------------------------------


def nfgen_payload(payload: bytes) -> tuple[int, int, dict[int, bytes]]:
    """(family, res_id, attributes) of an nfnetlink message body."""
    if len(payload) < NFGEN.size:
        raise NetlinkFormatError("nfnetlink message shorter than its header")
    family, _version, res_id = NFGEN.unpack_from(payload)
    return family, socket.ntohs(res_id), attributes(payload, NFGEN.size)


# --- building requests --------------------------------------------------------------------------


def nfgen(family: int, res_id: int) -> bytes:
    return NFGEN.pack(family, 0, socket.htons(res_id))


def nflog_bind(group: int, *, seq: int = 0) -> bytes:
    """Bind to NFLOG group `group`, copying whole packets, one message per packet."""
    mtype = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    flags = NLM_F_REQUEST | NLM_F_ACK
    return (message(mtype, flags, nfgen(socket.AF_UNSPEC, group) + attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND])), seq=seq)
            + message(mtype, flags, nfgen(socket.AF_UNSPEC, group)
                      + attr(NFULA_CFG_MODE, struct.pack(">IBx", 0xFFFF, NFULNL_COPY_PACKET)), seq=seq + 1)
            # Without a threshold of 1 the kernel batches for up to a second.
            + message(mtype, flags, nfgen(socket.AF_UNSPEC, group) + attr(NFULA_CFG_QTHRESH, struct.pack(">I", 1)),
                      seq=seq + 2))


def ct_flush(*, seq: int = 0) -> bytes:
    """Delete every conntrack entry of the netns (both families): each one
    then comes as a destroy event, with its final counters."""
    return message((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK,
                   nfgen(socket.AF_UNSPEC, 0), seq=seq)


def nft_add_elements(table: str, set_name: str, addresses: Iterable[IPAddress], *, family: int = NFPROTO_INET,
                     seq: int = 0, timeout_ms: Optional[int] = None) -> bytes:
    """One nf_tables transaction adding addresses to a set (existing ones are kept).

    With timeout_ms (the set needs flags timeout) each element expires that
    long after this addition; adding an element again restarts its timeout.
    """
    timeout = b""
    if timeout_ms is not None:
        # An element already in the set gets a new expiry only when the
        # expiration is given too: with the timeout alone, adding it again
        # left its first expiry in place (measured on Linux 6.18).
        timeout = (attr(NFTA_SET_ELEM_TIMEOUT, struct.pack("!Q", timeout_ms))
                   + attr(NFTA_SET_ELEM_EXPIRATION, struct.pack("!Q", timeout_ms)))
    elements = b"".join(
        attr(NFTA_LIST_ELEM, attr(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, a.packed), nested=True) + timeout,
             nested=True)
        for a in addresses)
    body = (nfgen(family, 0) + attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
            + attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
            + attr(NFTA_SET_ELEM_LIST_ELEMENTS, elements, nested=True))
    return (message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, nfgen(socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES), seq=seq)
            + message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
                      body, seq=seq + 1)
            + message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, nfgen(socket.AF_UNSPEC, NFNL_SUBSYS_NFTABLES), seq=seq + 2))


# --- conntrack events ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Endpoint:
    address: IPAddress
    port: Optional[int]  # None for ICMP


@attrs.frozen(kw_only=True)
class CtEvent:
    """One conntrack event (or dump entry)."""

    kind: str  # "new", "update" or "destroy"
    id: int
    proto: str  # tcp, udp, icmp, icmpv6 or the protocol number as text
    src: Endpoint
    dst: Endpoint
    reply_src: Optional[Endpoint] = None  # differs from dst when NAT rewrote it
    mark: int = 0
    tcp_state: Optional[int] = None
    packets_orig: Optional[int] = None
    bytes_orig: Optional[int] = None
    packets_reply: Optional[int] = None
    bytes_reply: Optional[int] = None
    start_ns: Optional[int] = None  # CLOCK_REALTIME, when the kernel had timestamps on
    stop_ns: Optional[int] = None


def parse_ct_event(msg: Message) -> Optional[CtEvent]:
    """A conntrack event, or None for messages that are not (acks, done)."""
    if msg.type >> 8 != NFNL_SUBSYS_CTNETLINK:
        return None
    sub = msg.type & 0xFF
    if sub == IPCTNL_MSG_CT_NEW:
        kind = "new" if msg.flags & NLM_F_CREATE else "update"
    elif sub == IPCTNL_MSG_CT_DELETE:
        kind = "destroy"
    else:
        return None
    _family, _res, attrs_ = nfgen_payload(msg.payload)
    if CTA_TUPLE_ORIG not in attrs_:
        raise NetlinkFormatError("conntrack event without its original tuple")
    proto, src, dst = _tuple(attrs_[CTA_TUPLE_ORIG])
    reply_src = None
    if CTA_TUPLE_REPLY in attrs_:
        _p, reply_src, _d = _tuple(attrs_[CTA_TUPLE_REPLY])
    tcp_state = None
    if CTA_PROTOINFO in attrs_:
        tcp = attributes(attrs_[CTA_PROTOINFO]).get(CTA_PROTOINFO_TCP)
        if tcp is not None:
            state = attributes(tcp).get(CTA_PROTOINFO_TCP_STATE)
            tcp_state = state[0] if state else None
    counters = {}
    for key, which in ((CTA_COUNTERS_ORIG, "orig"), (CTA_COUNTERS_REPLY, "reply")):
        if key in attrs_:
            c = attributes(attrs_[key])
            counters[f"packets_{which}"] = _be(c.get(CTA_COUNTERS_PACKETS))
            counters[f"bytes_{which}"] = _be(c.get(CTA_COUNTERS_BYTES))
    stamps = attributes(attrs_[CTA_TIMESTAMP]) if CTA_TIMESTAMP in attrs_ else {}
    return CtEvent(kind=kind, id=_be(attrs_.get(CTA_ID)) or 0, proto=proto, src=src, dst=dst, reply_src=reply_src,
                   mark=_be(attrs_.get(CTA_MARK)) or 0, tcp_state=tcp_state,
                   start_ns=_be(stamps.get(CTA_TIMESTAMP_START)), stop_ns=_be(stamps.get(CTA_TIMESTAMP_STOP)),
                   **counters)


def _be(data: Optional[bytes]) -> Optional[int]:
    if data is None:
        return None
    if len(data) not in (1, 2, 4, 8):
        raise NetlinkFormatError(f"integer attribute of {len(data)} bytes")
    return int.from_bytes(data, "big")


def _tuple(data: bytes) -> tuple[str, Endpoint, Endpoint]:
    t = attributes(data)
    if CTA_TUPLE_IP not in t or CTA_TUPLE_PROTO not in t:
        raise NetlinkFormatError("conntrack tuple without addresses or protocol")
    ip = attributes(t[CTA_TUPLE_IP])
    if CTA_IP_V4_SRC in ip and CTA_IP_V4_DST in ip:
        src_ip, dst_ip = _address(ip[CTA_IP_V4_SRC], 4), _address(ip[CTA_IP_V4_DST], 4)
    elif CTA_IP_V6_SRC in ip and CTA_IP_V6_DST in ip:
        src_ip, dst_ip = _address(ip[CTA_IP_V6_SRC], 16), _address(ip[CTA_IP_V6_DST], 16)
    else:
        raise NetlinkFormatError("conntrack tuple without a source and destination address")
    pr = attributes(t[CTA_TUPLE_PROTO])
    number = _be(pr.get(CTA_PROTO_NUM))
    if number is None:
        raise NetlinkFormatError("conntrack tuple without a protocol number")
    sport, dport = _be(pr.get(CTA_PROTO_SRC_PORT)), _be(pr.get(CTA_PROTO_DST_PORT))
    return (PROTO_NAMES.get(number, str(number)), Endpoint(address=src_ip, port=sport),
            Endpoint(address=dst_ip, port=dport))


def _address(data: bytes, size: int) -> IPAddress:
    if len(data) != size:
        raise NetlinkFormatError(f"address of {len(data)} bytes, expected {size}")
    return ipaddress.ip_address(data)


# --- NFLOG packets --------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LoggedPacket:
    prefix: str
    group: int
    proto: str
    src: Endpoint
    dst: Endpoint
    length: int  # IP packet length as sent


def parse_nflog(msg: Message) -> Optional[LoggedPacket]:
    """An NFLOG packet message, or None for other messages (acks) and non-IP payloads."""
    if msg.type != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
        return None
    _family, group, attrs_ = nfgen_payload(msg.payload)
    payload = attrs_.get(NFULA_PAYLOAD)
    if payload is None:
        return None
    parsed = parse_ip_packet(payload)
    if parsed is None:
        return None
    proto, src, dst, length = parsed
    prefix = attrs_.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("ascii", "replace")
    return LoggedPacket(prefix=prefix, group=group, proto=proto, src=src, dst=dst, length=length)


def parse_ip_packet(packet: bytes) -> Optional[tuple[str, Endpoint, Endpoint, int]]:
    """(protocol, source, destination, length) of an IPv4/IPv6 packet; None if unparsable.

    IPv6 option headers are skipped; any other extension header (a fragment)
    is reported as the protocol, without ports.
    """
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0xF) * 4
        length = int.from_bytes(packet[2:4], "big")
        number = packet[9]
        src, dst = ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20])
        fragment_offset = int.from_bytes(packet[6:8], "big") & 0x1FFF
        l4 = packet[ihl:] if ihl >= 20 and fragment_offset == 0 else b""
    elif version == 6 and len(packet) >= 40:
        length = 40 + int.from_bytes(packet[4:6], "big")
        number = packet[6]
        src, dst = ipaddress.IPv6Address(packet[8:24]), ipaddress.IPv6Address(packet[24:40])
        l4 = packet[40:]
        # Hop-by-hop, routing and destination options (MLD reports carry the
        # first): skip to the transport header, as nftables does.
        while number in _IPV6_OPTION_HEADERS and len(l4) >= 8:
            number, l4 = l4[0], l4[(l4[1] + 1) * 8:]
    else:
        return None
    sport = dport = None
    if number in (socket.IPPROTO_TCP, socket.IPPROTO_UDP) and len(l4) >= 4:
        sport, dport = int.from_bytes(l4[0:2], "big"), int.from_bytes(l4[2:4], "big")
    return (PROTO_NAMES.get(number, str(number)), Endpoint(address=src, port=sport),
            Endpoint(address=dst, port=dport), length)
