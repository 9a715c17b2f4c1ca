"""rtnetlink messages, byte for byte, and once against a real kernel.

The expected bytes are written out by hand from linux/netlink.h,
rtnetlink.h, if_link.h, if_addr.h and fib_rules.h (little-endian host).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from netwrap.backends.tunrelay import netlink

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="expected bytes are little-endian")


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def test_set_link_up_mtu_txqlen() -> None:
    got = netlink.set_link(2, up=True, mtu=65520, txqlen=10000, seq=7)
    assert got == h("""
        30000000 1000 0500 07000000 00000000
        00 00 0000 02000000 01000000 01000000
        0800 0400 f0ff0000
        0800 0d00 10270000
    """)


def test_add_ipv6_address_without_dad() -> None:
    addr = socket.inet_pton(socket.AF_INET6, "fd00::100")
    got = netlink.add_address(2, addr, 64, seq=1)
    assert got == h(f"""
        48000000 1400 0506 01000000 00000000
        0a 40 02 00 02000000
        1400 0200 {addr.hex()}
        1400 0100 {addr.hex()}
        0800 0800 02000000
    """)


def test_add_ipv4_address_keeps_dad_flag_off() -> None:
    got = netlink.add_address(3, bytes([10, 0, 2, 100]), 24, seq=2)
    assert got[16:24] == h("02 18 00 00 03000000")
    assert got.endswith(h("0800 0800 00000000"))


def test_default_route_via_gateway() -> None:
    got = netlink.add_route(socket.AF_INET, gateway=bytes([10, 0, 2, 2]), oif=2, seq=3)
    assert got == h("""
        34000000 1800 0506 03000000 00000000
        02 00 00 00 fe 03 00 01 00000000
        0800 0500 0a000202
        0800 0400 02000000
        0800 0f00 fe000000
    """)


def test_local_default_route_in_a_big_table() -> None:
    got = netlink.add_route(socket.AF_INET6, oif=1, table=0x4E57, kind=netlink.RTN_LOCAL, seq=4)
    # table > 255: rtm_table is 0 (RT_TABLE_UNSPEC), the RTA_TABLE attribute says which
    assert got == h("""
        2c000000 1800 0506 04000000 00000000
        0a 00 00 00 00 03 fe 02 00000000
        0800 0400 01000000
        0800 0f00 574e0000
    """)


def test_fwmark_rule() -> None:
    got = netlink.add_rule(socket.AF_INET, fwmark=0x400000, fwmask=0x400000, table=0x4E57, priority=100, seq=5)
    assert got == h("""
        3c000000 2000 0506 05000000 00000000
        02 00 00 00 00 00 00 01 00000000
        0800 0600 64000000
        0800 0a00 00004000
        0800 1000 00004000
        0800 0f00 574e0000
    """)


def test_get_link_by_name_pads_the_name() -> None:
    got = netlink.get_link("tun0", seq=9)
    assert got == h("""
        2c000000 1200 0100 09000000 00000000
        00 00 0000 00000000 00000000 00000000
        0900 0300 74756e30 00 000000
    """)


def test_parse_messages_and_errors() -> None:
    ack = h("24000000 0200 0000 05000000 00000000 00000000") + bytes(16)
    err = h("24000000 0200 0000 06000000 00000000 efffffff") + bytes(16)  # -17 EEXIST
    msgs = netlink.parse_messages(ack + err + b"\x01\x02")  # a truncated tail is ignored
    assert [(k, s) for k, s, _ in msgs] == [(2, 5), (2, 6)]
    assert netlink.error_code(msgs[0][2]) == 0
    assert netlink.error_code(msgs[1][2]) == 17
    assert netlink.parse_messages(h("ffff0000 0200 0000 01000000 00000000")) == []


LIVE = textwrap.dedent("""
    import fcntl, json, os, socket, struct, subprocess, sys
    from netwrap.backends.tunrelay import netlink
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"tun0", 0x1001))
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    rt = netlink.Rtnl(nl)
    idx = rt.link_index("tun0")
    rt.request(lambda s: netlink.set_link(idx, mtu=65520, txqlen=10000, seq=s), "link")
    rt.request(lambda s: netlink.add_address(idx, socket.inet_pton(socket.AF_INET6, "fd00::100"), 64, seq=s), "a6")
    rt.request(lambda s: netlink.add_address(idx, bytes([10, 0, 2, 100]), 24, seq=s), "a4")
    rt.request(lambda s: netlink.add_route(socket.AF_INET, gateway=bytes([10, 0, 2, 2]), oif=idx, seq=s), "r4")
    rt.request(lambda s: netlink.add_rule(socket.AF_INET, fwmark=4, fwmask=4, table=333, priority=100, seq=s), "rule")
    rt.request(lambda s: netlink.add_route(socket.AF_INET, oif=1, table=333, kind=netlink.RTN_LOCAL, seq=s), "lo")
    try:
        rt.request(lambda s: netlink.add_address(idx, bytes([10, 0, 2, 100]), 24, seq=s), "again")
        dup = None
    except OSError as exc:
        dup = exc.errno
    out = lambda *a: json.loads(subprocess.run(["ip", "-j", *a], capture_output=True, text=True).stdout)
    print(json.dumps({"idx": idx, "dup": dup, "link": out("link", "show", "tun0"), "addr": out("addr", "show", "tun0"),
                      "route": out("route"), "rule": out("rule"), "t333": out("route", "show", "table", "333", "type", "local")}))
""")


def test_against_a_real_netns() -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs unshare, ip and /dev/net/tun")
    repo = Path(__file__).resolve().parents[4]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent)}
    code = "import conftest\n" + LIVE  # conftest maps netwrap.backends for a bare checkout
    done = subprocess.run(["unshare", "-rn", sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=repo, timeout=30)
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip("no user namespaces here")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    assert r["dup"] == 17  # EEXIST comes back as OSError
    [link] = r["link"]
    assert link["ifindex"] == r["idx"] and link["mtu"] == 65520 and link["txqlen"] == 10000
    assert "UP" in link["flags"]
    addrs = {(a["local"], a["prefixlen"]) for a in r["addr"][0]["addr_info"]}
    assert {("10.0.2.100", 24), ("fd00::100", 64)} <= addrs
    v6 = next(a for a in r["addr"][0]["addr_info"] if a["local"] == "fd00::100")
    assert v6.get("nodad") and not v6.get("tentative")
    assert {"dst": "default", "gateway": "10.0.2.2", "dev": "tun0"}.items() <= next(
        x for x in r["route"] if x["dst"] == "default").items()
    assert any(x.get("fwmark") == "0x4" and x.get("table") == "333" for x in r["rule"])
    assert r["t333"] and r["t333"][0]["dev"] == "lo"
