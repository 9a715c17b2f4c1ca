"""Classic BPF socket filters for the capture's packet sockets.

A filter runs in the kernel before a packet is copied into the ring, so what
it refuses costs no copy, no ring space and no Python. Two programs:

- `loopback_redirected()`: for the sandbox's `lo`. Traffic that a
  redirection (TPROXY to a listener, as tunrelay's fast path and proxy
  forcing do) sends through lo keeps the real remote address, so it is the
  command's own traffic; lo's other traffic is local chatter (127.0.0.1 to
  127.0.0.1, or an address of the sandbox to itself) and stays out. lo also
  shows each packet twice (leaving, then arriving): only arrivals are kept.
- `ip_except_loopback_echo(lo_ifindex)`: for a socket on every interface of
  the host (wire-egress): IPv4 and IPv6 only, and lo's arrivals only.
- `except_networks(networks, ethernet)`: for the backend's interface when the
  backend keeps plumbing of its own there (tunrelay's NAT path talks to the
  sandbox's kernel from fake peer addresses): packets from or to those
  networks are not the command's traffic.

Programs are lists of (code, jt, jf, k), assembled with labels.
"""

from __future__ import annotations

import ctypes
import socket
import struct

SO_ATTACH_FILTER = 26

# Opcodes (linux/filter.h, linux/bpf_common.h).
_LD_W_ABS = 0x20
_LD_H_ABS = 0x28
_LD_B_ABS = 0x30
_JEQ_K = 0x15
_JEQ_X = 0x1D
_JA = 0x05
_AND_K = 0x54
_TAX = 0x07
_TXA = 0x87
_RET_K = 0x06

# Ancillary loads: what the kernel knows about the skb, not its bytes.
_SKF_AD_OFF = -0x1000
AD_PROTOCOL = (_SKF_AD_OFF + 0) & 0xFFFFFFFF
AD_PKTTYPE = (_SKF_AD_OFF + 4) & 0xFFFFFFFF
AD_IFINDEX = (_SKF_AD_OFF + 8) & 0xFFFFFFFF

PACKET_OUTGOING = 4
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
KEEP_ALL = 0xFFFFFFFF


def assemble(program: list[tuple]) -> bytes:
    """[(code, k), (code, k, "then", "else"), ("label",), ...] -> sock_filter array.

    Jump targets are label names; None means "next instruction".
    """
    labels: dict[str, int] = {}
    insns: list[tuple] = []
    for item in program:
        if len(item) == 1:
            labels[item[0]] = len(insns)
        else:
            insns.append(item)
    out = bytearray()
    for pc, item in enumerate(insns):
        code, k = item[0], item[1]
        jt = jf = 0
        if len(item) > 2:
            jt = _offset(labels, pc, item[2])
            jf = _offset(labels, pc, item[3])
        if code == _JA:
            k = _offset(labels, pc, k, limit=0xFFFFFFFF)
        out += struct.pack("=HBBI", code, jt, jf, k)
    return bytes(out)


def _offset(labels: dict[str, int], pc: int, target: str | None, limit: int = 255) -> int:
    if target is None:
        return 0
    off = labels[target] - pc - 1
    if not 0 <= off <= limit:
        raise ValueError(f"BPF jump to {target} out of range")
    return off


def attach(sock: socket.socket, program: bytes) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, so the buffer may go."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("@HP", len(program) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def loopback_redirected() -> bytes:
    """lo: keep arriving IP packets unless both ends are loopback or the same address."""
    return assemble([
        (_LD_W_ABS, AD_PKTTYPE),
        (_JEQ_K, PACKET_OUTGOING, "drop", None),
        (_LD_H_ABS, 12),  # lo frames carry a zeroed Ethernet header
        (_JEQ_K, ETH_P_IP, "v4", None),
        (_JEQ_K, ETH_P_IPV6, "v6", "drop"),
        ("v4",),
        (_LD_W_ABS, 30), (_TAX, 0),  # X = destination
        (_LD_W_ABS, 26),  # A = source
        (_JEQ_X, 0, "drop", None),
        (_AND_K, 0xFF000000),
        (_JEQ_K, 0x7F000000, None, "keep"),
        (_TXA, 0),
        (_AND_K, 0xFF000000),
        (_JEQ_K, 0x7F000000, "drop", "keep"),
        ("v6",),  # ::1 to ::1 is also "the same address"
        (_LD_W_ABS, 38), (_TAX, 0), (_LD_W_ABS, 22), (_JEQ_X, 0, None, "keep"),
        (_LD_W_ABS, 42), (_TAX, 0), (_LD_W_ABS, 26), (_JEQ_X, 0, None, "keep"),
        (_LD_W_ABS, 46), (_TAX, 0), (_LD_W_ABS, 30), (_JEQ_X, 0, None, "keep"),
        (_LD_W_ABS, 50), (_TAX, 0), (_LD_W_ABS, 34), (_JEQ_X, 0, "drop", "keep"),
        ("keep",),
        (_RET_K, KEEP_ALL),
        ("drop",),
        (_RET_K, 0),
    ])


def ip_except_loopback_echo(lo_ifindex: int) -> bytes:
    """Every interface: IPv4/IPv6 packets; on lo only arrivals (not the same packet twice)."""
    return assemble([
        (_LD_W_ABS, AD_PROTOCOL),
        (_JEQ_K, ETH_P_IP, "ip", None),
        (_JEQ_K, ETH_P_IPV6, "ip", "drop"),
        ("ip",),
        (_LD_W_ABS, AD_IFINDEX),
        (_JEQ_K, lo_ifindex, None, "keep"),
        (_LD_W_ABS, AD_PKTTYPE),
        (_JEQ_K, PACKET_OUTGOING, "drop", "keep"),
        ("keep",),
        (_RET_K, KEEP_ALL),
        ("drop",),
        (_RET_K, 0),
    ])


def except_networks(networks: list[str], *, ethernet: bool) -> bytes:
    """Keep every packet but IPv4/IPv6 ones from or to an address in `networks` (CIDRs)."""
    import ipaddress

    nets = [ipaddress.ip_network(n, strict=False) for n in networks]
    link = 14 if ethernet else 0
    prog: list[tuple] = []
    if ethernet:
        prog += [(_LD_H_ABS, 12), (_JEQ_K, ETH_P_IP, "v4", None), (_JEQ_K, ETH_P_IPV6, "v6", "keep")]
    else:  # bare IP (a TUN): the version nibble says which
        prog += [(_LD_B_ABS, 0), (_AND_K, 0xF0), (_JEQ_K, 0x40, "v4", None), (_JEQ_K, 0x60, "v6", "keep")]
    prog.append(("v4",))
    for net in (n for n in nets if n.version == 4):
        for where in (link + 12, link + 16):  # source, destination
            prog += [(_LD_W_ABS, where), (_AND_K, int(net.netmask)), (_JEQ_K, int(net.network_address), "drop", None)]
    prog.append((_JA, "keep"))
    prog.append(("v6",))
    label = 0
    for net in (n for n in nets if n.version == 6):
        words = struct.unpack("!4I", net.network_address.packed)
        masks = struct.unpack("!4I", net.netmask.packed)
        for where in (link + 8, link + 24):
            label += 1
            miss = f"miss{label}"
            for i in range(4):
                if masks[i] == 0:
                    break
                prog.append((_LD_W_ABS, where + 4 * i))
                if masks[i] != 0xFFFFFFFF:
                    prog.append((_AND_K, masks[i]))
                prog.append((_JEQ_K, words[i], None, miss))
            prog += [(_JA, "drop"), (miss,)]
    prog += [("keep",), (_RET_K, KEEP_ALL), ("drop",), (_RET_K, 0)]
    return assemble(prog)
