"""Reading an AF_PACKET socket through its TPACKET_V3 receive ring.

Why a packet socket with a ring, rather than reading a mirror TAP's fd:
- the kernel stamps each packet as the socket receives it (tp_sec/tp_nsec,
  nanoseconds); a TAP fd has no SO_TIMESTAMP, so the reader would only know
  when it got around to read();
- PACKET_STATISTICS counts what the ring had no room for, so drops are the
  kernel's own number, not a guess;
- the ring's size is ours to choose: a plain socket buffer is capped by the
  global net.core.rmem_max (about 200 KiB, and SO_RCVBUFFORCE needs
  CAP_NET_ADMIN on the host), which is a handful of 64 KiB GSO segments;
- one poll() wakes us per filled (or timed-out) block of packets, not per
  packet, and nothing needs tc, a TAP device or mirred in the sandbox.

The socket can be made anywhere it is allowed (inside the sandbox, by its
init) and set up here: ring, filter and bind act on the socket's own netns.

Layout (linux/if_packet.h): the ring is `count` blocks of `size` bytes. Each
block starts with a tpacket_block_desc; block_status has TP_STATUS_USER set
while the block is ours, and we hand it back by writing TP_STATUS_KERNEL.
Packets in a block are chained by tp_next_offset; each tpacket3_hdr is
followed by a sockaddr_ll (at TPACKET_ALIGN(sizeof hdr) = 48) naming the
interface, its ARPHRD type and the packet's direction.
"""

from __future__ import annotations

import mmap
import socket
import struct
from typing import Callable

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
ETH_P_ALL = 0x0003

PACKET_HOST = 0
PACKET_OUTGOING = 4

# ARPHRD_* (linux/if_arp.h) -> pcap link type and where the frame starts.
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772  # lo: a zeroed Ethernet header, as libpcap reports it
ARPHRD_NONE = 0xFFFE  # TUN: bare IP
ARPHRD_RAWIP = 519
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113


def linktype_of(hatype: int) -> int:
    """The pcap link type packets of this ARPHRD type are written with."""
    if hatype in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
        return LINKTYPE_ETHERNET
    if hatype in (ARPHRD_NONE, ARPHRD_RAWIP):
        return LINKTYPE_RAW
    return LINKTYPE_LINUX_SLL  # anything else: cooked header + network layer


_REQ3 = struct.Struct("=7I")  # struct tpacket_req3
_STATS3 = struct.Struct("=3I")  # struct tpacket_stats_v3
_BLOCK = struct.Struct("=III")  # block_status, num_pkts, offset_to_first_pkt (at +8)
_HDR = struct.Struct("=IIIIIIHH")  # next, sec, nsec, snaplen, len, status, mac, net
# sockaddr_ll: family, protocol (network order), ifindex, hatype, pkttype, halen
_SLL = struct.Struct("=H2siHBB")
_STATUS_OFFSET = 8
_SLL_OFFSET = 48
_COOKED = struct.Struct("!HHH8s")  # LINKTYPE_LINUX_SLL header, less the protocol

# (kernel timestamp ns, ifindex, ARPHRD type, PACKET_* direction, TP_STATUS_* flags,
#  frame, original length)
PacketHandler = Callable[[int, int, int, int, int, bytes, int], None]


class PacketRing:
    """A packet socket with a TPACKET_V3 ring; owns the socket from now on."""

    def __init__(self, sock: socket.socket, *, block_size: int = 1 << 20, block_count: int = 32,
                 retire_ms: int = 10, bpf: bytes | None = None) -> None:
        """Set the ring up on `sock` (unbound, so nothing is queued outside it yet).

        retire_ms: a block that is not full is handed over after this long, so
        a quiet flow still reaches the file within it.
        """
        self.sock = sock
        self._size = block_size
        self._count = block_count
        self._next = 0
        self._received = 0
        self._dropped = 0
        self._mm: mmap.mmap | None = None
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        if bpf is not None:
            from netwrap.capture.bpf import attach

            attach(sock, bpf)
        frame_size = 1 << 11  # V3 packs packets into blocks; only the ring geometry uses it
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, _REQ3.pack(
            block_size, block_count, frame_size, block_size // frame_size * block_count, retire_ms, 0, 0))
        self._mm = mmap.mmap(sock.fileno(), block_size * block_count, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)

    def bind(self, ifname: str) -> None:
        """Start receiving on `ifname` only (a socket made with protocol 0 receives nothing before).

        The name is looked up in the socket's netns, wherever this runs.
        (For every interface, make the socket with protocol htons(ETH_P_ALL)
        and do not bind it: Python cannot bind to ifindex 0.)
        """
        self.sock.bind((ifname, ETH_P_ALL))

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, handle: PacketHandler) -> int:
        """Pass every packet of every block the kernel has handed over; how many."""
        mm = self._mm
        if mm is None:
            return 0
        size = self._size
        count = 0
        hdr_unpack = _HDR.unpack_from
        sll_unpack = _SLL.unpack_from
        while True:
            base = self._next * size
            status, num, first = _BLOCK.unpack_from(mm, base + _STATUS_OFFSET)
            if not status & TP_STATUS_USER:
                return count
            p = base + first
            for _ in range(num):
                nxt, sec, nsec, snaplen, length, st, mac, net = hdr_unpack(mm, p)
                _fam, proto, ifindex, hatype, pkttype, _halen = sll_unpack(mm, p + _SLL_OFFSET)
                if hatype in (ARPHRD_ETHER, ARPHRD_LOOPBACK, ARPHRD_NONE, ARPHRD_RAWIP):
                    frame = mm[p + mac:p + mac + snaplen]
                    orig = length
                else:
                    cut = net - mac
                    frame = _COOKED.pack(pkttype, hatype, 0, b"") + proto + mm[p + net:p + mac + snaplen]
                    orig = length - cut + _COOKED.size + 2
                handle(sec * 1_000_000_000 + nsec, ifindex, hatype, pkttype, st, frame, orig)
                p += nxt
                count += 1
            struct.pack_into("=I", mm, base + _STATUS_OFFSET, TP_STATUS_KERNEL)
            self._next = (self._next + 1) % self._count

    def statistics(self) -> tuple[int, int]:
        """(packets the socket took, packets the ring had no room for), since the start.

        The kernel resets its counters on each read, so they are summed here.
        """
        if self._mm is not None:
            try:
                packets, drops, _freeze = _STATS3.unpack(
                    self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS3.size))
            except OSError:
                packets = drops = 0
            # The kernel counts drops among the packets too.
            self._received += packets
            self._dropped += drops
        return self._received, self._dropped

    def close(self) -> None:
        if self._mm is not None:
            self.statistics()
            self._mm.close()
            self._mm = None
        self.sock.close()
