"""netwrap.linux.netlink: framing, attributes, errors and the ack loop, on bytes.

Oracles: bytes written out by hand from linux/netlink.h (struct nlmsghdr,
struct nlattr, struct nlmsgerr; little-endian host) and pyroute2's own
message classes. The ack loop runs over an AF_UNIX datagram socketpair: the
test plays the kernel by queueing its answers as bytes.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink import nlmsg, nlmsgerr
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from netwrap.linux import netlink

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="expected bytes are little-endian")


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# struct nlmsgerr answering seq 5: error 0 (an ack), then the request's struct nlmsghdr
ACK_5 = h("24000000 0200 0000 05000000 00000000  00000000  14000000 1000 0500 05000000 00000000")
# the same, error -17 (EEXIST)
EEXIST_5 = h("24000000 0200 0000 05000000 00000000  efffffff  14000000 1000 0500 05000000 00000000")


# --- messages ---------------------------------------------------------------------------------


def test_message_header_by_hand() -> None:
    got = netlink.message(0x1234, 0x0405, b"\x01\x02\x03", seq=9, pid=77)
    # struct nlmsghdr: u32 len (16 + 3, no trailing padding counted), u16 type, u16 flags, u32 seq, u32 pid
    assert got == h("13000000 3412 0504 09000000 4d000000 010203")


def test_message_parsed_by_pyroute2() -> None:
    data = netlink.message(24, 0x0605, b"\0" * 12, seq=3)
    parsed = nlmsg(data)
    parsed.decode()
    assert parsed["header"] == {"length": 28, "type": 24, "flags": 0x0605, "sequence_number": 3, "pid": 0}


def test_iter_messages_of_pyroute2_messages_with_padding() -> None:
    first = nlmsg()
    first["header"].update(type=16, flags=1, sequence_number=41, pid=0)
    first.encode()
    first_bytes = bytes(first.data) + b"\xaa"  # an odd-length body: the next message starts 4-aligned
    first_bytes = struct.pack("=I", len(first_bytes)) + first_bytes[4:] + b"\0\0\0"
    second = ifinfmsg()
    second["header"].update(type=16, flags=2, sequence_number=42, pid=0)
    second["index"] = 3
    second.encode()
    got = list(netlink.iter_messages(first_bytes + bytes(second.data)))
    assert [(m.type, m.flags, m.seq) for m in got] == [(16, 1, 41), (16, 2, 42)]
    assert got[0].payload == b"\xaa"
    assert got[1].payload[4:8] == h("03000000")  # struct ifinfomsg: ifi_index after family, pad, type


def test_iter_messages_of_nothing_is_empty() -> None:
    assert list(netlink.iter_messages(b"")) == []


@pytest.mark.parametrize("data", [
    h("20000000 0200 0000 01000000 00000000"),  # nlmsg_len 32 runs past the 16 bytes there are
    h("0c000000 0200 0000 01000000 00000000"),  # nlmsg_len 12 is shorter than struct nlmsghdr
    ACK_5 + h("01020304"),  # a tail too short to be a header
], ids=["runs-past", "shorter-than-header", "short-tail"])
def test_bad_framing_is_a_format_error(data: bytes) -> None:
    with pytest.raises(netlink.NetlinkFormatError):
        list(netlink.iter_messages(data))


@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF),
                          st.binary(max_size=40)), max_size=5))
def test_messages_round_trip(specs: list[tuple[int, int, int, bytes]]) -> None:
    data = b""
    for mtype, flags, seq, body in specs:
        one = netlink.message(mtype, flags, body, seq=seq)
        data += one + b"\0" * (-len(one) % 4)
    got = [(m.type, m.flags, m.seq, m.payload) for m in netlink.iter_messages(data)]
    assert got == specs


@given(st.binary(max_size=300))
def test_any_datagram_parses_or_raises_format_error(data: bytes) -> None:
    try:
        messages = list(netlink.iter_messages(data))
    except netlink.NetlinkFormatError:
        return
    # What parsed accounts for the datagram: headers plus payloads, padded, cover it exactly.
    assert sum((16 + len(m.payload) + 3) & ~3 for m in messages) >= len(data)
    assert sum(16 + len(m.payload) for m in messages) <= len(data)


# --- attributes -------------------------------------------------------------------------------


def test_attribute_padding_and_nested_flag_by_hand() -> None:
    # struct nlattr: u16 len (4 + payload, padding not counted), u16 type; payload padded to 4
    assert netlink.attr(3, b"tun0\0") == h("0900 0300 74756e3000 000000")
    assert netlink.attr(2, b"") == h("0400 0200")
    assert netlink.attr(1, h("0800 0100 0a000001"), nested=True) == h("0c00 0180 0800 0100 0a000001")
    assert netlink.attr_u32(4, 65520) == h("0800 0400 f0ff0000")


def test_iter_attributes_keeps_order_and_repeats_and_masks_flags() -> None:
    data = h("0500 0180 aa 000000  0600 0100 bbbb 0000  0800 0240 01020304")
    assert list(netlink.iter_attributes(data)) == [(1, b"\xaa"), (1, b"\xbb\xbb"), (2, h("01020304"))]
    assert netlink.attributes(data) == {1: b"\xbb\xbb", 2: h("01020304")}


def test_find_walks_nested_attributes() -> None:
    # CTA_TUPLE_ORIG(1) { CTA_TUPLE_PROTO(2) { CTA_PROTO_NUM(1) = 6 } }, nested flags set as the kernel does
    data = h("1000 0180  0c00 0280  0500 0100 06 000000")
    assert netlink.find(data, 1, 2, 1) == b"\x06"
    assert netlink.find(data, 1, 1) is None
    assert netlink.find(data, 2, 1) is None


@pytest.mark.parametrize("data", [
    h("0800 0100 0102"),  # length 8 runs past the 6 bytes there are
    h("0200 0100"),  # length 2 is shorter than struct nlattr
    h("0400 0100 0102"),  # a tail too short for a header
], ids=["runs-past", "shorter-than-header", "short-tail"])
def test_bad_attributes_are_format_errors(data: bytes) -> None:
    with pytest.raises(netlink.NetlinkFormatError):
        netlink.attributes(data)


# --- errors -----------------------------------------------------------------------------------


def one(data: bytes) -> netlink.Message:
    [msg] = netlink.iter_messages(data)
    return msg


def test_error_codes() -> None:
    assert netlink.error_code(one(ACK_5)) == 0
    assert netlink.error_code(one(EEXIST_5)) == errno.EEXIST


def test_hand_written_errors_agree_with_pyroute2() -> None:
    for data, error in ((ACK_5, 0), (EEXIST_5, -errno.EEXIST)):
        parsed = nlmsgerr(data)
        parsed.decode()
        assert (parsed["header"]["type"], parsed["header"]["sequence_number"], parsed["error"]) == (2, 5, error)
        assert netlink.error_code(one(data)) == -error


@pytest.mark.parametrize("data", [
    h("14000000 0200 0000 05000000 00000000 00000000"),  # error 0 but no request header: truncated
    h("10000000 0200 0000 05000000 00000000"),  # no error field at all
    h("24000000 0200 0000 05000000 00000000 11000000") + bytes(16),  # a positive error
], ids=["no-request-header", "no-error", "positive-error"])
def test_malformed_errors_are_format_errors_not_acks(data: bytes) -> None:
    with pytest.raises(netlink.NetlinkFormatError):
        netlink.error_code(one(data))


# --- the ack loop -----------------------------------------------------------------------------


@pytest.fixture
def pair():
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.settimeout(2.0)
    kernel.settimeout(2.0)
    yield ours, kernel
    ours.close()
    kernel.close()


REQUEST_5 = h("14000000 1000 0500 05000000 00000000 00000000")  # type 16, NLM_F_REQUEST|NLM_F_ACK, seq 5


def test_request_waits_for_its_ack(pair) -> None:
    ours, kernel = pair
    late = h("24000000 0200 0000 04000000 00000000 efffffff") + bytes(16)  # an error for seq 4: not ours
    kernel.send(late)
    kernel.send(ACK_5)
    assert netlink.request(ours, REQUEST_5, "set link") == []
    assert kernel.recv(100) == REQUEST_5


def test_request_raises_the_kernels_errno(pair) -> None:
    ours, kernel = pair
    kernel.send(EEXIST_5)
    with pytest.raises(OSError) as exc:
        netlink.request(ours, REQUEST_5, "add address")
    assert exc.value.errno == errno.EEXIST and "add address" in str(exc.value)


@pytest.mark.parametrize("answer", [
    h("14000000 0200 0000 05000000 00000000 00000000"),  # nlmsghdr + 4-byte error 0, request header cut off
    h("24000000 0200 0000 05000000 00000000 00000000"),  # nlmsg_len 36 runs past the 20 bytes sent
], ids=["no-request-header", "length-runs-past"])
def test_truncated_error_is_an_error_never_an_ack(pair, answer: bytes) -> None:
    ours, kernel = pair
    kernel.send(answer)
    with pytest.raises(OSError) as exc:
        netlink.request(ours, REQUEST_5, "bring lo up")
    assert exc.value.errno == errno.EBADMSG


def test_request_returns_replies_before_the_ack(pair) -> None:
    ours, kernel = pair
    reply = h("18000000 1000 0000 05000000 00000000 00000000 03000000")  # RTM_NEWLINK for seq 5
    kernel.send(reply + ACK_5)  # answer and ack may share a datagram
    [got] = netlink.request(ours, REQUEST_5, "find interface")
    assert (got.type, got.seq, got.payload) == (16, 5, h("00000000 03000000"))


def test_a_batch_waits_for_every_ack_it_asked_for(pair) -> None:
    ours, kernel = pair
    batch = (h("14000000 1000 0500 05000000 00000000 00000000")
             + h("14000000 1000 0100 06000000 00000000 00000000")  # no NLM_F_ACK: no ack awaited
             + h("14000000 1000 0500 07000000 00000000 00000000"))
    tracker = netlink.AckTracker(batch, "batch")
    tracker.feed(ACK_5)
    assert not tracker.done
    tracker.feed(h("24000000 0200 0000 07000000 00000000 00000000") + bytes(16))
    assert tracker.done
    # An error for the message that asked for no ack still fails the request.
    kernel.send(h("24000000 0200 0000 06000000 00000000 ffffffff") + bytes(16))
    with pytest.raises(OSError) as exc:
        netlink.request(ours, batch, "batch")
    assert exc.value.errno == errno.EPERM


def test_a_request_without_ack_flags_does_not_wait(pair) -> None:
    ours, kernel = pair
    assert netlink.request(ours, h("14000000 1000 0100 05000000 00000000 00000000"), "fire and forget") == []
