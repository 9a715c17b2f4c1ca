"""The host-file readers: pure parsers over the kernel's text."""

from netwrap.linux.hostfiles import ipv6_by_interface, local_ipv4, read_host_file

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
