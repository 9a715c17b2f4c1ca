"""netwrap.linux.nfnetlink: conntrack events, NFLOG packets, set updates, on bytes only.

No expected bytes come from the module under test. Conntrack events are
built by pyroute2's nfct_msg (an independent encoder) or written out by hand
with the kernel's nested flags; NFLOG messages and requests are written out
by hand from the kernel headers (little-endian host); pyroute2's
nft_set_elem_list_msg reads the set update back. The end-to-end tests check
the same code against a real kernel.

Header values used below:
- linux/netfilter/nfnetlink.h: NFNL_SUBSYS_CTNETLINK 1, NFNL_SUBSYS_ULOG 4,
  NFNL_SUBSYS_NFTABLES 10, NFNL_MSG_BATCH_BEGIN 0x10, NFNL_MSG_BATCH_END 0x11;
  struct nfgenmsg { u8 nfgen_family; u8 version; __be16 res_id; }
- nfnetlink_conntrack.h: IPCTNL_MSG_CT_NEW 0, IPCTNL_MSG_CT_DELETE 2;
  CTA_TUPLE_ORIG 1, CTA_MARK 8, CTA_COUNTERS_ORIG 9, CTA_ID 12;
  CTA_TUPLE_IP 1, CTA_TUPLE_PROTO 2; CTA_IP_V4_SRC 1, CTA_IP_V4_DST 2;
  CTA_PROTO_NUM 1, CTA_PROTO_SRC_PORT 2, CTA_PROTO_DST_PORT 3;
  CTA_COUNTERS_PACKETS 1, CTA_COUNTERS_BYTES 2
- nfnetlink_log.h: NFULNL_MSG_PACKET 0, NFULNL_MSG_CONFIG 1; NFULA_PACKET_HDR 1,
  NFULA_PAYLOAD 9, NFULA_PREFIX 10; NFULA_CFG_CMD 1, NFULA_CFG_MODE 2,
  NFULA_CFG_QTHRESH 5; NFULNL_CFG_CMD_BIND 1, NFULNL_COPY_PACKET 2
- linux/netlink.h: NLM_F_REQUEST 1, NLM_F_ACK 4, NLM_F_CREATE 0x400, NLA_F_NESTED 0x8000
"""

from __future__ import annotations

import ipaddress
import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
from pyroute2.netlink.nfnetlink.nftsocket import nft_set_elem_list_msg

from netwrap.linux import nfnetlink as nl

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="expected bytes are little-endian")

ip = ipaddress.ip_address


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def ct_tuple(src: str, dst: str, proto: int, sport: int | None, dport: int | None) -> dict:
    v = "V4" if ip(src).version == 4 else "V6"
    ports = [["CTA_PROTO_NUM", proto]]
    if sport is not None:
        ports += [["CTA_PROTO_SRC_PORT", sport], ["CTA_PROTO_DST_PORT", dport]]
    return {"attrs": [["CTA_TUPLE_IP", {"attrs": [[f"CTA_IP_{v}_SRC", src], [f"CTA_IP_{v}_DST", dst]]}],
                      ["CTA_TUPLE_PROTO", {"attrs": ports}]]}


def ct_bytes(kind: str, *, ident=7, mark=18, src="10.0.2.100", dst="93.184.215.14", proto=6, sport=40000,
             dport=80, reply_src=None, tcp_state=None, counters=None, stamps=None) -> bytes:
    """A conntrack event as pyroute2 encodes it."""
    msg = nfct_msg()
    # (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE or IPCTNL_MSG_CT_NEW; NLM_F_CREATE marks "new"
    msg["header"].update(type=0x0102 if kind == "destroy" else 0x0100, flags=0x400 if kind == "new" else 0,
                         sequence_number=0, pid=0)
    msg["nfgen_family"] = 2 if ip(src).version == 4 else 10
    attrs = [["CTA_TUPLE_ORIG", ct_tuple(src, dst, proto, sport, dport)],
             ["CTA_TUPLE_REPLY", ct_tuple(reply_src or dst, src, proto, dport, sport)],
             ["CTA_STATUS", 8], ["CTA_MARK", mark], ["CTA_ID", ident]]
    if tcp_state is not None:
        attrs.append(["CTA_PROTOINFO", {"attrs": [["CTA_PROTOINFO_TCP", {
            "attrs": [["CTA_PROTOINFO_TCP_STATE", tcp_state]]}]]}])
    if counters:
        for key, (packets, nbytes) in zip(("CTA_COUNTERS_ORIG", "CTA_COUNTERS_REPLY"), counters):
            attrs.append([key, {"attrs": [["CTA_COUNTERS_PACKETS", packets], ["CTA_COUNTERS_BYTES", nbytes]]}])
    if stamps:
        attrs.append(["CTA_TIMESTAMP", {"attrs": [["CTA_TIMESTAMP_START", stamps[0]],
                                                  ["CTA_TIMESTAMP_STOP", stamps[1]]]}])
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def ct_message(kind: str, **fields) -> nl.Message:
    [msg] = nl.iter_messages(ct_bytes(kind, **fields))
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


# A destroy event as the kernel sends it: nested attributes carry NLA_F_NESTED (0x8000).
KERNEL_DESTROY = h("""
    74000000 0201 0000 00000000 00000000
    02 00 0000
    3400 0180
      1400 0180  0800 0100 0a000264  0800 0200 08080808
      1c00 0280  0500 0100 11 000000  0600 0200 1388 0000  0600 0300 0035 0000
    1c00 0980  0c00 0100 0000000000000001  0c00 0200 000000000000003c
    0800 0800 00000012
    0800 0c00 00000007
""")


def test_kernel_style_destroy_event_by_hand():
    # nlmsghdr: len 116, type 0x0102 (CTNETLINK << 8 | CT_DELETE); nfgenmsg AF_INET;
    # CTA_TUPLE_ORIG { CTA_TUPLE_IP { 10.0.2.100 -> 8.8.8.8 }, CTA_TUPLE_PROTO { 17, 5000 -> 53 } },
    # CTA_COUNTERS_ORIG { 1 packet, 60 bytes }, CTA_MARK 0x12, CTA_ID 7
    [msg] = nl.iter_messages(KERNEL_DESTROY)
    event = nl.parse_ct_event(msg)
    assert event == nl.CtEvent(kind="destroy", id=7, proto="udp", mark=0x12,
                               src=nl.Endpoint(address=ip("10.0.2.100"), port=5000),
                               dst=nl.Endpoint(address=ip("8.8.8.8"), port=53),
                               packets_orig=1, bytes_orig=60)


@given(st.sampled_from(["new", "update", "destroy"]), st.ip_addresses(v=4), st.ip_addresses(v=4),
       st.sampled_from([6, 17]), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
       st.integers(0, 0xFFFFFFFF), st.integers(0, 2**63), st.integers(0, 2**63))
def test_any_pyroute2_event_reads_back(kind, src, dst, proto, sport, dport, mark, ident, packets, nbytes):
    event = nl.parse_ct_event(ct_message(kind, src=str(src), dst=str(dst), proto=proto, sport=sport, dport=dport,
                                         mark=mark, ident=ident, counters=[(packets, nbytes), (1, 2)]))
    assert (event.kind, event.proto, event.mark, event.id) == (kind, {6: "tcp", 17: "udp"}[proto], mark, ident)
    assert event.src == nl.Endpoint(address=src, port=sport) and event.dst == nl.Endpoint(address=dst, port=dport)
    assert (event.packets_orig, event.bytes_orig, event.packets_reply, event.bytes_reply) == (packets, nbytes, 1, 2)


def test_non_events_are_none():
    # struct nlmsgerr: error 0 (an ack), then the request's nlmsghdr
    [ack] = nl.iter_messages(h("24000000 0200 0000 00000000 00000000 00000000") + bytes(16))
    assert nl.parse_ct_event(ack) is None and nl.error_code(ack) == 0
    [refused] = nl.iter_messages(h("24000000 0200 0000 00000000 00000000 ffffffff") + bytes(16))
    assert nl.error_code(refused) == 1
    # IPCTNL_MSG_CT_GET (1) is no event
    [get] = nl.iter_messages(h("14000000 0101 0000 00000000 00000000 02000000"))
    assert nl.parse_ct_event(get) is None


def ipv4_packet(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                         ip(src).packed, ip(dst).packed)
    return header + payload


def nflog_message(prefix: bytes, packet: bytes) -> nl.Message:
    assert len(prefix) == 5 and len(packet) % 4 == 0  # keeps the hand-written lengths below right
    data = (struct.pack("=IHHII", 16 + 4 + 8 + 12 + 4 + len(packet), 0x0400, 0, 0, 0)  # ULOG << 8 | MSG_PACKET
            + h("02 00 4e57")  # nfgenmsg: AF_INET, version 0, res_id = group 0x4E57 (big endian)
            + h("0800 0100 0800 03 00")  # NFULA_PACKET_HDR: hw_protocol 0x0800, hook 3 (LOCAL_OUT)
            + h("0a00 0a00") + prefix + h("00 0000")  # NFULA_PREFIX, NUL-terminated, padded
            + struct.pack("=HH", 4 + len(packet), 9) + packet)  # NFULA_PAYLOAD
    [msg] = nl.iter_messages(data)
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
    # NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq 10; nfgenmsg AF_UNSPEC, res_id NFNL_SUBSYS_NFTABLES (big endian)
    begin = h("14000000 1000 0100 0a000000 00000000 00 00 000a")
    end = h("14000000 1100 0100 0c000000 00000000 00 00 000a")
    assert data.startswith(begin) and data.endswith(end)
    add = nft_set_elem_list_msg(data[len(begin):-len(end)])
    add.decode()
    # (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM (12); REQUEST | ACK | CREATE
    assert add["header"]["type"] == 0x0A0C and add["header"]["flags"] == 0x405
    assert add["header"]["sequence_number"] == 11 and add["header"]["length"] == len(data) - 40
    assert add["nfgen_family"] == 1  # NFPROTO_INET
    assert add.get_attr("NFTA_SET_ELEM_LIST_TABLE") == "netwrap_policy"
    assert add.get_attr("NFTA_SET_ELEM_LIST_SET") == "name_1_v4"
    keys = [e.get_attr("NFTA_SET_ELEM_KEY").get_attr("NFTA_DATA_VALUE")
            for e in add.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")]
    assert keys == [bytes([192, 0, 2, 1]), bytes([192, 0, 2, 9])]


def test_nflog_bind_and_flush_requests():
    # Three NFULNL_MSG_CONFIG (0x0401) requests, REQUEST|ACK, seqs 1..3, nfgenmsg AF_UNSPEC res_id = group.
    assert nl.nflog_bind(0x4E57, seq=1) == h("""
        1c000000 0104 0500 01000000 00000000 00 00 4e57  0500 0100 01 000000
        20000000 0104 0500 02000000 00000000 00 00 4e57  0a00 0200 0000ffff 02 00 0000
        1c000000 0104 0500 03000000 00000000 00 00 4e57  0800 0500 00000001
    """)  # CFG_CMD BIND; CFG_MODE copy_range 0xffff, COPY_PACKET; CFG_QTHRESH 1
    # IPCTNL_MSG_CT_DELETE (0x0102), REQUEST|ACK, seq 4, nfgenmsg AF_UNSPEC and no attributes: everything
    assert nl.ct_flush(seq=4) == h("14000000 0201 0500 04000000 00000000 00 00 0000")


def test_truncated_messages_are_format_errors():
    data = ct_bytes("destroy", counters=[(1, 60), (1, 40)])
    with pytest.raises(nl.NetlinkFormatError):
        list(nl.iter_messages(data[:-8]))  # the header's length runs past the datagram
    [good] = nl.iter_messages(data)
    broken = nl.Message(type=good.type, flags=good.flags, seq=good.seq, payload=good.payload[:40])
    with pytest.raises(nl.NetlinkFormatError):
        nl.parse_ct_event(broken)


IP_ADDRESS = (ipaddress.IPv4Address, ipaddress.IPv6Address)


def well_formed(endpoint: nl.Endpoint) -> bool:
    return isinstance(endpoint.address, IP_ADDRESS) and (endpoint.port is None or 0 <= endpoint.port <= 0xFFFF)


def check_parsed(msg: nl.Message) -> None:
    """What a parser returns, if it returns, is a well-formed value of its declared type."""
    event = nl.parse_ct_event(msg)
    if event is not None:
        assert event.kind in ("new", "update", "destroy") and isinstance(event.id, int) and event.id >= 0
        assert well_formed(event.src) and well_formed(event.dst)
        assert event.src.address.version == event.dst.address.version
        assert event.reply_src is None or well_formed(event.reply_src)
    logged = nl.parse_nflog(msg)
    if logged is not None:
        assert isinstance(logged.prefix, str) and 0 <= logged.group <= 0xFFFF
        assert well_formed(logged.src) and well_formed(logged.dst) and logged.length >= 0


@given(st.binary(max_size=300))
def test_any_bytes_parse_to_well_formed_values_or_raise_format_error(data):
    try:
        messages = list(nl.iter_messages(data))
    except nl.NetlinkFormatError:
        return
    for msg in messages:
        try:
            check_parsed(msg)
        except nl.NetlinkFormatError:
            pass  # the one declared parse error; any other exception fails the test


@given(st.binary(max_size=200), st.sampled_from([0x0100, 0x0102, 0x0400]), st.sampled_from([0, 0x400]))
def test_any_event_body_parses_to_well_formed_values_or_raises_format_error(body, mtype, flags):
    # the body after an AF_INET nfgenmsg, so the parsers reach the attributes
    msg = nl.Message(type=mtype, flags=flags, seq=0, payload=h("02 00 0000") + body)
    try:
        check_parsed(msg)
    except nl.NetlinkFormatError:
        pass


@given(st.binary(min_size=4, max_size=120))
def test_any_tuple_attribute_parses_or_raises_format_error(inner):
    # CTA_TUPLE_ORIG holding arbitrary bytes: the nested parsers never trust them
    body = h("02 00 0000") + struct.pack("=HH", 4 + len(inner), 0x8001) + inner + b"\0" * (-len(inner) % 4)
    try:
        check_parsed(nl.Message(type=0x0100, flags=0x400, seq=0, payload=body))
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
