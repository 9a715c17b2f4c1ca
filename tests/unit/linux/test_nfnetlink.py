"""netwrap.linux.nfnetlink: conntrack events, NFLOG packets, set updates, on bytes only.

Messages are built here field by field from the kernel's header layouts
(linux/netfilter/nfnetlink_conntrack.h, nfnetlink_log.h, nf_tables.h); the
end-to-end tests check the same code against a real kernel.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netwrap.linux import nfnetlink as nl

ip = ipaddress.ip_address


def u8(v: int) -> bytes:
    return bytes([v])


def be16(v: int) -> bytes:
    return struct.pack(">H", v)


def be32(v: int) -> bytes:
    return struct.pack(">I", v)


def be64(v: int) -> bytes:
    return struct.pack(">Q", v)


def tuple_attr(kind: int, src: str, dst: str, proto: int, sport: int | None, dport: int | None) -> bytes:
    s, d = ip(src), ip(dst)
    if s.version == 4:
        addrs = nl.attr(nl.CTA_IP_V4_SRC, s.packed) + nl.attr(nl.CTA_IP_V4_DST, d.packed)
    else:
        addrs = nl.attr(nl.CTA_IP_V6_SRC, s.packed) + nl.attr(nl.CTA_IP_V6_DST, d.packed)
    ports = nl.attr(nl.CTA_PROTO_NUM, u8(proto))
    if sport is not None:
        ports += nl.attr(nl.CTA_PROTO_SRC_PORT, be16(sport)) + nl.attr(nl.CTA_PROTO_DST_PORT, be16(dport))
    return nl.attr(kind, nl.attr(nl.CTA_TUPLE_IP, addrs, nested=True)
                   + nl.attr(nl.CTA_TUPLE_PROTO, ports, nested=True), nested=True)


def ct_message(kind: str, *, ident=7, mark=18, src="10.0.2.100", dst="93.184.215.14", proto=6, sport=40000,
               dport=80, reply_src=None, tcp_state=None, counters=None, stamps=None) -> nl.Message:
    body = nl.nfgen(socket.AF_INET, 0)
    body += tuple_attr(nl.CTA_TUPLE_ORIG, src, dst, proto, sport, dport)
    body += tuple_attr(nl.CTA_TUPLE_REPLY, reply_src or dst, src, proto, dport, sport)
    body += nl.attr(nl.CTA_STATUS, be32(8)) + nl.attr(nl.CTA_MARK, be32(mark)) + nl.attr(nl.CTA_ID, be32(ident))
    if tcp_state is not None:
        body += nl.attr(nl.CTA_PROTOINFO, nl.attr(nl.CTA_PROTOINFO_TCP, nl.attr(
            nl.CTA_PROTOINFO_TCP_STATE, u8(tcp_state)), nested=True), nested=True)
    if counters:
        for key, (packets, nbytes) in zip((nl.CTA_COUNTERS_ORIG, nl.CTA_COUNTERS_REPLY), counters):
            body += nl.attr(key, nl.attr(nl.CTA_COUNTERS_PACKETS, be64(packets))
                            + nl.attr(nl.CTA_COUNTERS_BYTES, be64(nbytes)), nested=True)
    if stamps:
        body += nl.attr(nl.CTA_TIMESTAMP, nl.attr(nl.CTA_TIMESTAMP_START, be64(stamps[0]))
                        + nl.attr(nl.CTA_TIMESTAMP_STOP, be64(stamps[1])), nested=True)
    sub = nl.IPCTNL_MSG_CT_DELETE if kind == "destroy" else nl.IPCTNL_MSG_CT_NEW
    flags = nl.NLM_F_CREATE if kind == "new" else 0
    data = nl.message((nl.NFNL_SUBSYS_CTNETLINK << 8) | sub, flags, body)
    [msg] = nl.iter_messages(data)
    return msg


def test_conntrack_new_update_destroy():
    new = nl.parse_ct_event(ct_message("new"))
    assert new.kind == "new" and new.id == 7 and new.mark == 18 and new.proto == "tcp"
    assert new.src == nl.Endpoint(address=ip("10.0.2.100"), port=40000)
    assert new.dst == nl.Endpoint(address=ip("93.184.215.14"), port=80)
    assert new.bytes_orig is None
    update = nl.parse_ct_event(ct_message("update", tcp_state=7))
    assert update.kind == "update" and update.tcp_state == 7
    gone = nl.parse_ct_event(ct_message("destroy", counters=[(6, 342), (5, 20372)],
                                        stamps=(1_700_000_000_000_000_000, 1_700_000_001_000_000_000)))
    assert gone.kind == "destroy"
    assert (gone.packets_orig, gone.bytes_orig, gone.packets_reply, gone.bytes_reply) == (6, 342, 5, 20372)
    assert gone.start_ns == 1_700_000_000_000_000_000 and gone.stop_ns == 1_700_000_001_000_000_000


def test_conntrack_ipv6_icmp_and_nat():
    msg = ct_message("new", src="fd00::100", dst="2606:4700::1111", proto=58, sport=None, dport=None)
    event = nl.parse_ct_event(msg)
    assert event.proto == "icmpv6" and event.dst.port is None and event.dst.address == ip("2606:4700::1111")
    redirected = nl.parse_ct_event(ct_message("new", proto=17, dport=53, dst="169.254.0.53",
                                              reply_src="127.0.0.1"))
    assert redirected.reply_src.address == ip("127.0.0.1")


def test_non_events_are_none():
    ack = nl.message(nl.NLMSG_ERROR, 0, struct.pack("=i", 0) + b"\0" * 16)
    [msg] = nl.iter_messages(ack)
    assert nl.parse_ct_event(msg) is None and nl.error_code(msg) == 0
    [refused] = nl.iter_messages(nl.message(nl.NLMSG_ERROR, 0, struct.pack("=i", -1) + b"\0" * 16))
    assert nl.error_code(refused) == 1


def ipv4_packet(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                         ip(src).packed, ip(dst).packed)
    return header + payload


def nflog_message(prefix: bytes, packet: bytes, group: int = 0x4E57) -> nl.Message:
    body = (nl.nfgen(socket.AF_INET, group) + nl.attr(nl.NFULA_PACKET_HDR, be16(0x0800) + b"\x03\0")
            + nl.attr(nl.NFULA_PREFIX, prefix + b"\0") + nl.attr(nl.NFULA_PAYLOAD, packet))
    [msg] = nl.iter_messages(nl.message((nl.NFNL_SUBSYS_ULOG << 8) | nl.NFULNL_MSG_PACKET, 0, body))
    return msg


def test_nflog_packet():
    syn = ipv4_packet("10.0.2.100", "10.20.30.40", 6, struct.pack(">HH", 43986, 80) + b"\0" * 36)
    logged = nl.parse_nflog(nflog_message(b"nw:4 ", syn))
    assert logged.prefix == "nw:4 " and logged.group == 0x4E57 and logged.proto == "tcp"
    assert logged.src.port == 43986 and logged.dst == nl.Endpoint(address=ip("10.20.30.40"), port=80)
    assert logged.length == 60


def test_ipv6_packet_and_garbage():
    packet = (struct.pack(">IHBB", 0x60000000, 8, 17, 64) + ip("fd00::100").packed + ip("2001:db8::1").packed
              + struct.pack(">HHHH", 5000, 53, 8, 0))
    proto, src, dst, length = nl.parse_ip_packet(packet)
    assert (proto, src.port, dst.port, length) == ("udp", 5000, 53, 48)
    assert nl.parse_ip_packet(b"") is None and nl.parse_ip_packet(b"\x45" * 10) is None
    assert nl.parse_ip_packet(b"\x00" * 40) is None


def test_set_update_is_one_transaction():
    data = nl.nft_add_elements("netwrap_policy", "name_1_v4", [ip("192.0.2.1"), ip("192.0.2.9")], seq=10)
    begin, add, end = nl.iter_messages(data)
    assert begin.type == nl.NFNL_MSG_BATCH_BEGIN and end.type == nl.NFNL_MSG_BATCH_END
    assert add.type == (nl.NFNL_SUBSYS_NFTABLES << 8) | nl.NFT_MSG_NEWSETELEM
    assert add.flags & nl.NLM_F_ACK and add.flags & nl.NLM_F_CREATE and add.seq == 11
    family, _, attrs = nl.nfgen_payload(add.payload)
    assert family == nl.NFPROTO_INET
    assert attrs[nl.NFTA_SET_ELEM_LIST_TABLE] == b"netwrap_policy\0"
    assert attrs[nl.NFTA_SET_ELEM_LIST_SET] == b"name_1_v4\0"
    keys = []
    offset = 0
    elements = attrs[nl.NFTA_SET_ELEM_LIST_ELEMENTS]
    while offset < len(elements):  # several NFTA_LIST_ELEM of the same type
        length, _ = nl.NLA_HDR.unpack_from(elements, offset)
        elem = nl.attributes(elements[offset + 4: offset + length])
        keys.append(nl.attributes(elem[nl.NFTA_SET_ELEM_KEY])[nl.NFTA_DATA_VALUE])
        offset += (length + 3) & ~3
    assert keys == [ip("192.0.2.1").packed, ip("192.0.2.9").packed]


def test_nflog_bind_and_flush_requests():
    msgs = list(nl.iter_messages(nl.nflog_bind(0x4E57, seq=1)))
    assert [m.seq for m in msgs] == [1, 2, 3] and all(m.flags & nl.NLM_F_ACK for m in msgs)
    assert all(nl.nfgen_payload(m.payload)[1] == 0x4E57 for m in msgs)
    [flush] = nl.iter_messages(nl.ct_flush(seq=4))
    assert flush.type == (nl.NFNL_SUBSYS_CTNETLINK << 8) | nl.IPCTNL_MSG_CT_DELETE
    assert nl.nfgen_payload(flush.payload)[2] == {}


def test_truncated_messages_are_format_errors():
    good = ct_message("destroy", counters=[(1, 60), (1, 40)])
    data = nl.message(good.type, good.flags, good.payload)
    with pytest.raises(nl.NetlinkFormatError):
        list(nl.iter_messages(data[:-8]))  # the header's length runs past the datagram
    broken = nl.Message(good.type, good.flags, good.seq, good.payload[:40])
    with pytest.raises(nl.NetlinkFormatError):
        nl.parse_ct_event(broken)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_format_error(data):
    try:
        messages = list(nl.iter_messages(data))
    except nl.NetlinkFormatError:
        return
    for msg in messages:
        for parse in (nl.parse_ct_event, nl.parse_nflog):
            try:
                parse(msg)
            except nl.NetlinkFormatError:
                pass


@given(st.binary(max_size=200), st.sampled_from([nl.IPCTNL_MSG_CT_NEW, nl.IPCTNL_MSG_CT_DELETE]))
def test_any_conntrack_body_parses_or_raises_format_error(body, sub):
    msg = nl.Message((nl.NFNL_SUBSYS_CTNETLINK << 8) | sub, 0, 0, body)
    try:
        nl.parse_ct_event(msg)
    except nl.NetlinkFormatError:
        pass


def test_ipv6_hop_by_hop_is_skipped():
    # An MLDv2 report: hop-by-hop (router alert) then ICMPv6 type 143.
    hbh = bytes([58, 0, 5, 2, 0, 0, 1, 0])
    icmp = bytes([143, 0, 0, 0, 0, 0, 0, 1]) + b"\0" * 20
    packet = (struct.pack(">IHBB", 0x60000000, len(hbh) + len(icmp), 0, 1) + ip("fe80::1").packed
              + ip("ff02::16").packed + hbh + icmp)
    proto, src, dst, length = nl.parse_ip_packet(packet)
    assert proto == "icmpv6" and dst == nl.Endpoint(address=ip("ff02::16"), port=None) and length == 76
