"""tunrelay packet core micro-benchmark: per-packet cost of the pure code.

    /opt/netwrap-venv/bin/python benchmarks/micro_packets.py [--seconds S]

For each IP packet size (TCP segments with a virtio_net_hdr, partial
checksum, GSO for the large ones, as a TUN with TUNSETOFFLOAD hands them):

parse        parse_frame alone
rewrite      parse + NAT rewrite of an established flow, frame is bytes
             (one copy of the packet per rewrite)
in-place     the same on a bytearray the I/O layer read into: no copy
engine       RelayCore.from_tun (parse + dispatch + rewrite + event)
udp-out      RelayCore.from_tun on a UDP datagram (flow lookup, event)
udp-in       RelayCore.udp_from_host: build a datagram to the child with a
             partial checksum (the kernel completes it)
checksum     full Internet checksum in Python, for comparison: what offload saves

Rates are reported, not asserted (Gbit/s counts IP bytes). No I/O is done.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

try:
    from netwrap.backends.tunrelay.checksum import checksum
except ImportError:  # a bare checkout: map netwrap.backends -> backends/ by hand
    import types

    import netwrap

    _pkg = types.ModuleType("netwrap.backends")
    _pkg.__path__ = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "backends")]
    sys.modules["netwrap.backends"] = netwrap.backends = _pkg
    from netwrap.backends.tunrelay.checksum import checksum

from netwrap.backends.tunrelay.core import CoreConfig, RelayCore  # noqa: E402
from netwrap.backends.tunrelay.nat import NatConfig, NewFlow, TcpNat  # noqa: E402
from netwrap.backends.tunrelay.packets import parse_frame  # noqa: E402
from netwrap.backends.tunrelay.vnet import GSO_TCPV4, build_vnet  # noqa: E402

CHILD, FAR = bytes([10, 0, 2, 100]), bytes([93, 184, 216, 34])
LISTENER, POOL = ("10.0.2.100", 1), "10.0.3.0/24"
SIZES = (64, 576, 1500, 9000, 65000)


def tcp_frame(size: int, sport: int = 40000, flags: int = 0x18) -> bytes:
    """A TCP/IPv4 frame of ``size`` IP bytes as the TUN delivers it."""
    plen = size - 40
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0x4000, 64, 6, 0, CHILD, FAR)
    tcp = struct.pack("!HHIIHHHH", sport, 443, 1, 1, (5 << 12) | flags, 65535, 0x1234, 0)
    gso = GSO_TCPV4 if size > 1500 else 0
    hdr = build_vnet(1, gso, 40 if gso else 0, 1448 if gso else 0, 20, 16)
    return hdr + ip + tcp + bytes(plen)


def udp_frame(size: int) -> bytes:
    plen = size - 28
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 0, 0x4000, 64, 17, 0, CHILD, FAR)
    return bytes(10) + ip + struct.pack("!HHHH", 5353, 443, 8 + plen, 0) + bytes(plen)


def rate(fn, seconds: float, trials: int = 3) -> float:
    """Calls per second of ``fn``: the best of ``trials`` runs sharing
    ``seconds`` (the best, because other load only ever slows a run down)."""
    best = 0.0
    for _ in range(trials):
        n, batch, t0 = 0, 64, time.perf_counter()
        while True:
            for _ in range(batch):
                fn()
            n += batch
            dt = time.perf_counter() - t0
            if dt >= seconds / trials:
                break
            batch = min(batch * 2, 65536)
        best = max(best, n / dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.6, help="per measurement")
    args = ap.parse_args()
    cfg = NatConfig(listener4=LISTENER, pool4=POOL, hold_syn=False)
    nat = TcpNat(cfg)
    nat.rewrite(parse_frame(tcp_frame(64, flags=0x02)), 0.0)  # open the flow
    core = RelayCore(CoreConfig(nat=cfg))
    core.from_tun(tcp_frame(64, flags=0x02), 0.0)
    ev = core.from_tun(udp_frame(64), 0.0)
    flow = ev.flow

    print(f"python {sys.version.split()[0]}; rates in thousand packets/s (Gbit/s of IP bytes)")
    cols = ("parse", "rewrite", "in-place", "engine", "udp-out", "udp-in", "checksum")
    print(f"{'size':>6} " + " ".join(f"{c:>16}" for c in cols))
    for size in SIZES:
        frame = tcp_frame(size)
        buf = bytearray(frame)
        view = memoryview(buf)
        udp = udp_frame(size)
        payload = bytes(size - 28)
        ip_bytes = frame[10:]
        head = ip_bytes[:40]
        assert not isinstance(nat.rewrite(parse_frame(frame), 0.0), (NewFlow, type(None)))

        def rewrite_inplace():
            nat.rewrite(parse_frame(view), 1.0)
            view[10:50] = head  # put the original headers back for the next round

        tests = {
            "parse": lambda: parse_frame(frame),
            "rewrite": lambda: nat.rewrite(parse_frame(frame), 1.0),
            "in-place": rewrite_inplace,
            "engine": lambda: core.from_tun(frame, 1.0),
            "udp-out": lambda: core.from_tun(udp, 1.0),
            "udp-in": lambda: core.udp_from_host(flow, payload, 1.0),
            "checksum": lambda: checksum(ip_bytes),
        }
        cells = []
        for name in cols:
            r = rate(tests[name], args.seconds)
            cells.append(f"{r / 1e3:8.1f} ({r * size * 8 / 1e9:5.2f})")
        print(f"{size:>6} " + " ".join(f"{c:>16}" for c in cells))
    print("in-place includes putting the 40 header bytes back after each rewrite")


if __name__ == "__main__":
    main()
