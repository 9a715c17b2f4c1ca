"""The 10-byte ``struct virtio_net_hdr`` that prefixes every TUN frame.

With ``IFF_VNET_HDR`` each read from the TUN starts with this header and each
write must too.  ``TUNSETOFFLOAD`` (CSUM, TSO4/6, USO4/6) lets the kernel hand
over 64 KiB TCP/UDP "super-segments" (``gso_type``/``gso_size``) and packets
whose transport checksum is only *partial* (``NEEDS_CSUM``: the field holds
the pseudo-header sum; the real sum is computed by whoever delivers the
packet).  The relay keeps the header of a packet it rewrites, and builds
fresh ones for packets it makes up.

Byte order: the kernel uses little endian for this legacy header on
little-endian hosts (and on any host after ``TUNSETVNETLE``); this module
always uses little endian, so the I/O layer should issue ``TUNSETVNETLE`` on
big-endian hosts.

The ioctl numbers and flag values the I/O layer needs are here too: they are
plain constants, and keeping them next to the header keeps them in sync.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

__all__ = [
    "VNET_HDR_LEN",
    "F_NEEDS_CSUM",
    "F_DATA_VALID",
    "F_RSC_INFO",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_UDP",
    "GSO_TCPV6",
    "GSO_UDP_L4",
    "GSO_ECN",
    "VnetHdr",
    "parse_vnet",
    "build_vnet",
    "needs_csum",
    "is_gso",
    "csum_header",
    "PLAIN",
    "PLAIN_HDR",
    "IFF_TUN",
    "IFF_NO_PI",
    "IFF_VNET_HDR",
    "TUNSETIFF",
    "TUNSETOFFLOAD",
    "TUNSETVNETHDRSZ",
    "TUNSETVNETLE",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "TUN_F_TSO_ECN",
    "TUN_F_UFO",
    "TUN_F_USO4",
    "TUN_F_USO6",
]

VNET_HDR_LEN = 10

# virtio_net_hdr.flags
F_NEEDS_CSUM = 1  # checksum at csum_start+csum_offset is partial
F_DATA_VALID = 2  # receive side: checksum already verified
F_RSC_INFO = 4

# virtio_net_hdr.gso_type
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO: IP fragmentation offload, deprecated; we refuse it
GSO_TCPV6 = 4
GSO_UDP_L4 = 5  # USO: UDP segmentation (UDP_SEGMENT), one UDP header per gso_size
GSO_ECN = 0x80  # flag bit: TCP with CWR set in the first segment

# linux/if_tun.h, for the I/O layer
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

_HDR = struct.Struct("<BBHHHH")


class VnetHdr(NamedTuple):
    """Decoded virtio_net_hdr.  Offsets are relative to the IP header."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return _HDR.pack(*self)


#: header for a packet whose checksums are complete and that is not GSO
PLAIN = VnetHdr()
PLAIN_HDR = PLAIN.pack()


def parse_vnet(buf, offset: int = 0) -> VnetHdr | None:
    """Decode the header at ``offset``; ``None`` if fewer than 10 bytes."""
    if len(buf) - offset < VNET_HDR_LEN or offset < 0:
        return None
    return VnetHdr._make(_HDR.unpack_from(buf, offset))


def build_vnet(
    flags: int = 0,
    gso_type: int = GSO_NONE,
    hdr_len: int = 0,
    gso_size: int = 0,
    csum_start: int = 0,
    csum_offset: int = 0,
) -> bytes:
    """Encode a header; values must fit (u8 flags/gso_type, u16 others)."""
    return _HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def needs_csum(hdr: VnetHdr | None) -> bool:
    """True if the packet's transport checksum is partial (to be completed)."""
    return hdr is not None and bool(hdr.flags & F_NEEDS_CSUM)


def is_gso(hdr: VnetHdr | None) -> bool:
    return hdr is not None and (hdr.gso_type & ~GSO_ECN) != GSO_NONE


_csum_cache: dict[tuple[int, int], bytes] = {}


def csum_header(csum_start: int, csum_offset: int) -> bytes:
    """Header telling the kernel to complete the checksum at the given place.

    Used for packets the relay builds (UDP to the child): the transport
    checksum field then only needs the pseudo-header sum, so no payload is
    summed in Python.  The kernel treats such a packet as CHECKSUM_PARTIAL,
    which local delivery accepts without computing anything.  Only a few
    (start, offset) pairs exist, so the encoded headers are cached.
    """
    key = (csum_start, csum_offset)
    hdr = _csum_cache.get(key)
    if hdr is None:
        hdr = _HDR.pack(F_NEEDS_CSUM, GSO_NONE, 0, 0, csum_start, csum_offset)
        if len(_csum_cache) < 64:
            _csum_cache[key] = hdr
    return hdr
