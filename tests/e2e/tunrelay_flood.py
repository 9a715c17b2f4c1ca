"""Hostile input for tunrelay, sent from inside the sandbox: run as its root.

    python tunrelay_flood.py COUNT DEVICE SEED [RATE]

Writes COUNT IP packets straight onto DEVICE (the sandbox's TUN) through a
packet socket, bypassing the sandbox's own IP stack, so every byte reaches
the relay as written.  Most are broken on purpose (truncated headers, lying
length fields, fragments, unknown protocols, bad IPv6 extension chains,
random garbage); the rest are plausible UDP/ICMP/TCP packets to closed ports
of the world with random mutations (bad checksums, odd flags).  Prints one
JSON line: packets sent, and how many of them are malformed by construction
(each of those must be dropped and counted).  RATE (packets per second,
default 50000) paces the flood: a TUN's ring silently drops what the relay
has not read yet, and the test wants every packet to reach the relay.
stdlib only.
"""

from __future__ import annotations

import errno
import json
import random
import socket
import struct
import sys
import time

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
SRC4, DST4 = bytes([10, 0, 2, 100]), bytes([93, 184, 215, 14])
SRC6 = socket.inet_pton(socket.AF_INET6, "fd00::100")
DST6 = socket.inet_pton(socket.AF_INET6, "2606:4700::1111")


def ipv4(proto: int, payload: bytes, *, frag: int = 0x4000, total: int | None = None, ihl: int = 5) -> bytes:
    tot = 20 + len(payload) if total is None else total
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tot, 1, frag, 64, proto, 0, SRC4, DST4) + payload


def ipv6(nh: int, payload: bytes, *, plen: int | None = None) -> bytes:
    n = len(payload) if plen is None else plen
    return struct.pack("!IHBB16s16s", 0x60000000, n, nh, 64, SRC6, DST6) + payload


def udp(rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randrange(0, 64))
    return struct.pack("!HHHH", rng.randrange(1024, 65535), rng.choice((9, 13, 19)), 8 + len(body),
                       rng.randrange(65536)) + body


def tcp(rng: random.Random) -> bytes:
    flags = rng.choice((0x02, 0x10, 0x11, 0x04, 0x12, 0x3F, 0x00))
    return struct.pack("!HHIIHHHH", rng.randrange(1024, 65535), rng.choice((9, 13)), rng.randrange(1 << 32),
                       rng.randrange(1 << 32), (5 << 12) | flags, 1024, rng.randrange(65536), 0)


def icmp(rng: random.Random, v6: bool) -> bytes:
    typ = rng.choice((128, 1, 3, 135) if v6 else (8, 3, 11, 13))
    return struct.pack("!BBHHH", typ, rng.randrange(4), rng.randrange(65536), rng.randrange(65536),
                       rng.randrange(65536)) + rng.randbytes(rng.randrange(0, 32))


def malformed(rng: random.Random) -> bytes:
    """A packet the relay's parser must refuse, whatever else is random."""
    kind = rng.randrange(10)
    if kind == 0:  # truncated below any IP header
        return rng.randbytes(rng.randrange(1, 20))
    if kind == 1:  # IPv4 total length beyond the packet
        body = udp(rng)
        return ipv4(17, body, total=20 + len(body) + rng.randrange(1, 2000))
    if kind == 2:  # IPv4 fragment (MF or an offset)
        return ipv4(17, udp(rng), frag=rng.choice((0x2000, 0x0001, 0x20FF, 0x1FFF)))
    if kind == 3:  # IPv4 header length below 20
        return ipv4(6, tcp(rng), ihl=rng.randrange(0, 5))
    if kind == 4:  # unknown transport protocol
        return ipv4(rng.choice((0, 2, 47, 50, 132, 253, 255)), rng.randbytes(rng.randrange(8, 64)))
    if kind == 5:  # transport header cut short
        return ipv4(rng.choice((6, 17)), rng.randbytes(rng.randrange(0, 8)))
    if kind == 6:  # IPv6 payload length beyond the packet
        body = udp(rng)
        return ipv6(17, body, plen=len(body) + rng.randrange(1, 3000))
    if kind == 7:  # IPv6 fragment header
        return ipv6(44, bytes([17, 0]) + struct.pack("!HI", rng.randrange(65536) | 1, 7) + udp(rng))
    if kind == 8:  # a long extension header chain (destination options)
        chain = b"".join(bytes([60, 0]) + bytes(6) for _ in range(12))
        return ipv6(60, chain[:-8] + bytes([17, 0]) + bytes(6) + udp(rng))
    return bytes([rng.choice((0x00, 0x10, 0x50, 0x70, 0xF0))]) + rng.randbytes(rng.randrange(20, 80))  # version


def plausible(rng: random.Random) -> bytes:
    """A well-formed packet to a closed port, then maybe a few bytes flipped."""
    v6 = rng.random() < 0.4
    proto = rng.choice((6, 17, 58 if v6 else 1))
    body = tcp(rng) if proto == 6 else udp(rng) if proto == 17 else icmp(rng, v6)
    pkt = bytearray(ipv6(proto, body) if v6 else ipv4(proto, body))
    for _ in range(rng.randrange(0, 3)):
        i = rng.randrange(len(pkt))
        pkt[i] = rng.randrange(256)
    return bytes(pkt)


def main() -> int:
    count, device, seed = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 50000.0
    rng = random.Random(seed)
    start = time.monotonic()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
    sent = bad = retries = 0
    for _ in range(count):
        is_bad = rng.random() < 0.8
        pkt = malformed(rng) if is_bad else plausible(rng)
        proto = ETH_P_IPV6 if pkt and pkt[0] >> 4 == 6 else ETH_P_IP
        while True:
            try:
                s.sendto(pkt, (device, proto))
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS or retries > 100000:
                    raise
                retries += 1  # the device queue is full: the relay is behind; wait for it
                time.sleep(0.0005)
        sent += 1
        bad += is_bad
        if sent % 500 == 0:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    print(json.dumps({"sent": sent, "malformed": bad, "retries": retries}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
