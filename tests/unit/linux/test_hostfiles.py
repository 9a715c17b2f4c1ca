"""The host-file readers: pure parsers over the kernel's text."""

from netwrap.linux.hostfiles import default_gateways, ipv6_by_interface, local_ipv4, read_host_file

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.0.2.0/24 2 0 2
        |-- 10.0.2.100
           /32 host LOCAL
        |-- 10.0.2.255
           /32 link BROADCAST
     |-- 127.0.0.1
        /32 host LOCAL
"""

IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000100 02 40 00 80     tap0
zz000000000000000000000000000100 02 40 00 80     bad0
short 02 40 00 80 eth9
"""


def test_local_ipv4_lists_local_host_routes_only() -> None:
    assert local_ipv4(FIB_TRIE) == ["10.0.2.100", "127.0.0.1"]
    assert local_ipv4("") == []


def test_ipv6_by_interface_skips_malformed_lines() -> None:
    assert ipv6_by_interface(IF_INET6) == [
        (bytes(15) + b"\x01", "lo"),
        (bytes.fromhex("fd000000000000000000000000000100"), "tap0"),
    ]


def test_read_host_file_missing_is_empty(tmp_path) -> None:
    assert read_host_file(str(tmp_path / "missing")) == ""
    (tmp_path / "f").write_bytes(b"a\xffb")
    assert read_host_file(str(tmp_path / "f")) == "a\ufffdb"


def test_default_gateways_from_the_route_tables():
    # 192.0.2.1 is C0.00.02.01; /proc/net/route prints its bytes reversed (host order).
    route = ("Iface\tDestination\tGateway \tFlags\n"
             "eth0\t00000000\t010200C0\t0003\n"  # default via 192.0.2.1
             "eth0\t000200C0\t00000000\t0001\n"  # 192.0.2.0/24, no gateway
             "eth1\t00000000\tZZZZZZZZ\t0003\n")  # unreadable: skipped
    ipv6_route = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
                  "20010db800000000000000000000fffe 00000400 00000001 00000000 00000003 eth0\n"
                  "20010db8000000000000000000000000 40 00000000000000000000000000000000 00 "
                  "00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n")
    assert default_gateways(route, ipv6_route) == ["192.0.2.1", "2001:db8::fffe"]
    assert default_gateways("", "") == []
