"""virtio_net_hdr encoding."""

from __future__ import annotations

import struct

from hypothesis import given, strategies as st

from netwrap.backends.tunrelay import vnet
from netwrap.backends.tunrelay.vnet import VnetHdr, build_vnet, parse_vnet


def test_layout_is_the_kernel_one():
    # struct virtio_net_hdr: u8 flags, u8 gso_type, then four 16-bit fields,
    # little endian (virtio legacy on LE hosts / after TUNSETVNETLE).
    raw = build_vnet(1, 4, 66, 1448, 40, 16)
    assert raw == bytes([1, 4]) + struct.pack("<HHHH", 66, 1448, 40, 16)
    assert len(raw) == vnet.VNET_HDR_LEN == 10
    assert parse_vnet(raw) == VnetHdr(1, 4, 66, 1448, 40, 16)


def test_short_buffer():
    assert parse_vnet(b"\0" * 9) is None
    assert parse_vnet(b"\0" * 12, offset=3) is None
    assert parse_vnet(b"\0" * 10, offset=-1) is None


@given(st.tuples(st.integers(0, 255), st.integers(0, 255), *[st.integers(0, 0xFFFF)] * 4))
def test_round_trip(fields):
    assert parse_vnet(build_vnet(*fields)) == VnetHdr(*fields)
    assert VnetHdr(*fields).pack() == build_vnet(*fields)


def test_helpers():
    assert vnet.PLAIN_HDR == bytes(10)
    assert not vnet.needs_csum(None) and not vnet.needs_csum(vnet.PLAIN)
    h = parse_vnet(vnet.csum_header(20, 6))
    assert vnet.needs_csum(h) and (h.csum_start, h.csum_offset) == (20, 6)
    assert not vnet.is_gso(h)
    assert vnet.is_gso(VnetHdr(1, vnet.GSO_TCPV4 | vnet.GSO_ECN, 0, 1448, 20, 16))
    assert not vnet.is_gso(VnetHdr(0, vnet.GSO_ECN))


def test_ioctl_numbers():
    # _IOW('T', nr, int) = 1<<30 | 4<<16 | ord('T')<<8 | nr
    iow = lambda nr: (1 << 30) | (4 << 16) | (ord("T") << 8) | nr  # noqa: E731
    assert vnet.TUNSETIFF == iow(202)
    assert vnet.TUNSETOFFLOAD == iow(208)
    assert vnet.TUNSETVNETHDRSZ == iow(216)
    assert vnet.TUNSETVNETLE == iow(220)
