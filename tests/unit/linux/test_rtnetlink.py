"""rtnetlink messages, byte for byte, through pyroute2, and once against a real kernel.

The expected bytes are written out by hand from linux/netlink.h,
rtnetlink.h, if_link.h, if_addr.h and fib_rules.h (little-endian host);
pyroute2's message classes (ifinfmsg, ifaddrmsg, rtmsg, fibmsg) are a second,
independent reader of what netwrap builds.
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

from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from netwrap.linux import netlink, rtnetlink

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="expected bytes are little-endian")


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


def test_set_link_up_mtu_txqlen() -> None:
    got = rtnetlink.set_link(2, up=True, mtu=65520, txqlen=10000, seq=7)
    assert got == h("""
        30000000 1000 0500 07000000 00000000
        00 00 0000 02000000 01000000 01000000
        0800 0400 f0ff0000
        0800 0d00 10270000
    """)


def test_add_ipv6_address_without_dad() -> None:
    addr = socket.inet_pton(socket.AF_INET6, "fd00::100")
    got = rtnetlink.add_address(2, addr, 64, seq=1)
    assert got == h(f"""
        48000000 1400 0506 01000000 00000000
        0a 40 02 00 02000000
        1400 0200 {addr.hex()}
        1400 0100 {addr.hex()}
        0800 0800 02000000
    """)


def test_add_ipv4_address_keeps_dad_flag_off() -> None:
    got = rtnetlink.add_address(3, bytes([10, 0, 2, 100]), 24, seq=2)
    assert got[16:24] == h("02 18 00 00 03000000")
    assert got.endswith(h("0800 0800 00000000"))


def test_default_route_via_gateway() -> None:
    got = rtnetlink.add_route(socket.AF_INET, gateway=bytes([10, 0, 2, 2]), oif=2, seq=3)
    assert got == h("""
        34000000 1800 0506 03000000 00000000
        02 00 00 00 fe 03 00 01 00000000
        0800 0500 0a000202
        0800 0400 02000000
        0800 0f00 fe000000
    """)


def test_local_default_route_in_a_big_table() -> None:
    got = rtnetlink.add_route(socket.AF_INET6, oif=1, table=0x4E57, kind=rtnetlink.RTN_LOCAL, seq=4)
    # table > 255: rtm_table is 0 (RT_TABLE_UNSPEC), the RTA_TABLE attribute says which
    assert got == h("""
        2c000000 1800 0506 04000000 00000000
        0a 00 00 00 00 03 fe 02 00000000
        0800 0400 01000000
        0800 0f00 574e0000
    """)


def test_fwmark_rule() -> None:
    got = rtnetlink.add_rule(socket.AF_INET, fwmark=0x400000, fwmask=0x400000, table=0x4E57, priority=100, seq=5)
    assert got == h("""
        3c000000 2000 0506 05000000 00000000
        02 00 00 00 00 00 00 01 00000000
        0800 0600 64000000
        0800 0a00 00004000
        0800 1000 00004000
        0800 0f00 574e0000
    """)


def test_get_link_by_name_pads_the_name() -> None:
    got = rtnetlink.get_link("tun0", seq=9)
    # NLM_F_REQUEST | NLM_F_ACK: the kernel acks after its RTM_NEWLINK answer
    assert got == h("""
        2c000000 1200 0500 09000000 00000000
        00 00 0000 00000000 00000000 00000000
        0900 0300 74756e30 00 000000
    """)


def decoded(cls, data: bytes):
    msg = cls(data)
    msg.decode()
    return msg


def test_pyroute2_reads_set_link() -> None:
    msg = decoded(ifinfmsg, rtnetlink.set_link(2, up=True, mtu=65520, txqlen=10000, seq=7))
    assert (msg["header"]["type"], msg["header"]["flags"], msg["header"]["sequence_number"]) == (16, 0x5, 7)
    assert (msg["index"], msg["flags"], msg["change"]) == (2, 1, 1)
    assert msg.get_attr("IFLA_MTU") == 65520 and msg.get_attr("IFLA_TXQLEN") == 10000
    down = decoded(ifinfmsg, rtnetlink.set_link(4, up=False))
    assert (down["index"], down["flags"], down["change"]) == (4, 0, 1)
    assert down.get_attr("IFLA_MTU") is None


def test_pyroute2_reads_get_link() -> None:
    msg = decoded(ifinfmsg, rtnetlink.get_link("tun0", seq=9))
    assert msg["header"]["type"] == 18 and msg.get_attr("IFLA_IFNAME") == "tun0"


def test_pyroute2_reads_add_address() -> None:
    v6 = decoded(ifaddrmsg, rtnetlink.add_address(2, socket.inet_pton(socket.AF_INET6, "fd00::100"), 64, seq=1))
    assert (v6["header"]["type"], v6["header"]["flags"]) == (20, 0x605)  # REQUEST|ACK|EXCL|CREATE
    assert (v6["family"], v6["prefixlen"], v6["index"], v6["flags"]) == (socket.AF_INET6, 64, 2, 0x02)
    assert v6.get_attr("IFA_LOCAL") == "fd00::100" and v6.get_attr("IFA_ADDRESS") == "fd00::100"
    assert v6.get_attr("IFA_FLAGS") == 0x02  # IFA_F_NODAD
    v4 = decoded(ifaddrmsg, rtnetlink.add_address(3, bytes([10, 0, 2, 100]), 24))
    assert (v4["family"], v4["prefixlen"], v4["index"]) == (socket.AF_INET, 24, 3)
    assert v4.get_attr("IFA_LOCAL") == "10.0.2.100" and v4.get_attr("IFA_FLAGS") == 0


def test_pyroute2_reads_add_route() -> None:
    via = decoded(rtmsg, rtnetlink.add_route(socket.AF_INET, gateway=bytes([10, 0, 2, 2]), oif=2, seq=3))
    assert (via["family"], via["dst_len"], via["table"], via["type"], via["scope"]) == (socket.AF_INET, 0, 254, 1, 0)
    assert via.get_attr("RTA_GATEWAY") == "10.0.2.2" and via.get_attr("RTA_OIF") == 2
    assert via.get_attr("RTA_TABLE") == 254
    local = decoded(rtmsg, rtnetlink.add_route(socket.AF_INET6, dst=bytes(16), dst_len=0, oif=1, table=0x4E57,
                                               kind=rtnetlink.RTN_LOCAL))
    assert (local["family"], local["table"], local["type"], local["scope"]) == (socket.AF_INET6, 0, 2, 254)
    assert local.get_attr("RTA_DST") == "::" and local.get_attr("RTA_TABLE") == 0x4E57
    onlink = decoded(rtmsg, rtnetlink.add_route(socket.AF_INET, dst=bytes([192, 0, 2, 0]), dst_len=24,
                                                gateway=bytes([10, 0, 2, 2]), onlink=True))
    assert onlink["flags"] == 4 and onlink["dst_len"] == 24 and onlink.get_attr("RTA_DST") == "192.0.2.0"


def test_pyroute2_reads_add_rule() -> None:
    msg = decoded(fibmsg, rtnetlink.add_rule(socket.AF_INET6, fwmark=4, fwmask=4, table=333, priority=100, seq=5))
    assert (msg["header"]["type"], msg["family"], msg["action"], msg["table"]) == (32, socket.AF_INET6, 1, 0)
    assert (msg.get_attr("FRA_FWMARK"), msg.get_attr("FRA_FWMASK")) == (4, 4)
    assert (msg.get_attr("FRA_TABLE"), msg.get_attr("FRA_PRIORITY")) == (333, 100)


def test_link_index_of_a_pyroute2_answer() -> None:
    answer = ifinfmsg()
    answer["header"].update(type=16, flags=0, sequence_number=1, pid=0)
    answer["index"] = 7
    answer["attrs"] = [["IFLA_IFNAME", "tun0"]]
    answer.encode()
    [msg] = netlink.iter_messages(bytes(answer.data))
    assert rtnetlink.link_index(msg.payload) == 7
    with pytest.raises(netlink.NetlinkFormatError):
        rtnetlink.link_index(msg.payload[:8])  # shorter than struct ifinfomsg (16 bytes)


def test_rtnl_finds_a_link_and_reports_errors() -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        ours.settimeout(2.0)
        # The kernel's answer to seq 1: RTM_NEWLINK for index 5 (struct ifinfomsg), then the ack.
        kernel.send(h("20000000 1000 0000 01000000 00000000 00 00 0000 05000000 00000000 00000000")
                    + h("24000000 0200 0000 01000000 00000000 00000000 2c000000 1200 0500 01000000 00000000"))
        # seq 2: the kernel refuses with -19 (ENODEV)
        kernel.send(h("24000000 0200 0000 02000000 00000000 edffffff 30000000 1000 0500 02000000 00000000"))
        rtnl = rtnetlink.Rtnl(ours)
        assert rtnl.link_index("tun0") == 5
        with pytest.raises(OSError) as exc:
            rtnl.request(lambda s: rtnetlink.set_link(5, seq=s), "bring tun0 up")
        assert exc.value.errno == 19 and "bring tun0 up" in str(exc.value)
        # what the kernel was sent: RTM_GETLINK, REQUEST|ACK, seq 1, struct ifinfomsg, IFLA_IFNAME "tun0"
        assert kernel.recv(100) == h("2c000000 1200 0500 01000000 00000000 00000000 00000000 00000000 00000000"
                                     "0900 0300 74756e30 00 000000")


LIVE = textwrap.dedent("""
    import fcntl, json, os, socket, struct, subprocess, sys
    from netwrap.linux import rtnetlink
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"tun0", 0x1001))
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    rt = rtnetlink.Rtnl(nl)
    idx = rt.link_index("tun0")
    rt.request(lambda s: rtnetlink.set_link(idx, mtu=65520, txqlen=10000, seq=s), "link")
    rt.request(lambda s: rtnetlink.add_address(idx, socket.inet_pton(socket.AF_INET6, "fd00::100"), 64, seq=s), "a6")
    rt.request(lambda s: rtnetlink.add_address(idx, bytes([10, 0, 2, 100]), 24, seq=s), "a4")
    rt.request(lambda s: rtnetlink.add_route(socket.AF_INET, gateway=bytes([10, 0, 2, 2]), oif=idx, seq=s), "r4")
    rt.request(lambda s: rtnetlink.add_rule(socket.AF_INET, fwmark=4, fwmask=4, table=333, priority=100, seq=s), "rule")
    rt.request(lambda s: rtnetlink.add_route(socket.AF_INET, oif=1, table=333, kind=rtnetlink.RTN_LOCAL, seq=s), "lo")
    try:
        rt.request(lambda s: rtnetlink.add_address(idx, bytes([10, 0, 2, 100]), 24, seq=s), "again")
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
    repo = Path(__file__).resolve().parents[3]
    done = subprocess.run(["unshare", "-rn", sys.executable, "-c", LIVE], capture_output=True, text=True,
                          cwd=repo, timeout=30)
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
