"""netwrap.policy.startup: where the host is, and the --allow hostnames' addresses at start."""

from __future__ import annotations

import ipaddress
import socket

from netwrap.backends import NetworkInfo
from netwrap.policy import startup
from privileges import needs_loopback


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
     +-- 192.0.2.0/24 2 0 2
        |-- 192.0.2.0
           /24 link UNICAST
        |-- 192.0.2.2
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
20010db800ff00000000000000000002 02 40 00 80  nwveth0
"""
ROUTE = """Iface\tDestination\tGateway \tFlags
nwveth0\t00000000\t010200C0\t0003
nwveth0\t000200C0\t00000000\t0001
"""
IPV6_ROUTE = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
              "20010db800ff00000000000000000001 00000400 00000001 00000000 00000003  nwveth0\n")


def test_host_addresses_from_proc(monkeypatch):
    files = {"/proc/net/fib_trie": FIB_TRIE, "/proc/net/if_inet6": IF_INET6, "/proc/net/route": ROUTE,
             "/proc/net/ipv6_route": IPV6_ROUTE}
    monkeypatch.setattr(startup, "read_host_file", lambda path: files.get(path, ""))
    network = NetworkInfo(gateways=("10.0.2.2", "fd00::2"))
    assert startup.host_addresses(network) == ["192.0.2.2", "2001:db8:ff::2", "10.0.2.2", "fd00::2",
                                                 "192.0.2.1", "2001:db8:ff::1"]


# The world host with addresses on its lo outside 127.0.0.0/8 and ::1, as
# /proc shows them (192.0.2.200/32, 169.254.169.254/32, 2001:db8:ff::200/128).
FIB_TRIE_LO_ALIASES = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
     |-- 169.254.169.254
        /32 host LOCAL
     +-- 192.0.2.0/24 2 0 2
        |-- 192.0.2.0
           /24 link UNICAST
        |-- 192.0.2.2
           /32 host LOCAL
        |-- 192.0.2.200
           /32 host LOCAL
"""
IF_INET6_LO_ALIASES = IF_INET6 + "20010db800ff00000000000000000200 01 80 00 80       lo\n"


def test_host_addresses_include_the_hosts_lo_outside_loopback(monkeypatch):
    # --block-private refuses every address of the host, those on its lo
    # included (reached like the others), but not 127.0.0.1 or ::1 (the
    # sandbox's own loopback, which the preset leaves alone).
    files = {"/proc/net/fib_trie": FIB_TRIE_LO_ALIASES, "/proc/net/if_inet6": IF_INET6_LO_ALIASES}
    monkeypatch.setattr(startup, "read_host_file", lambda path: files.get(path, ""))
    assert sorted(startup.host_addresses(NetworkInfo())) == sorted(
        ["169.254.169.254", "192.0.2.2", "192.0.2.200", "2001:db8:ff::2", "2001:db8:ff::200"])


def test_start_resolution_uses_resolvers_and_hosts_files(monkeypatch):
    answers = {"www.example.test": ["93.184.215.14", "2606:4700::1111"]}

    def fake_getaddrinfo(name, port, type=0):  # never the machine's resolver
        if name not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, type, 6, "", (a, 0)) for a in answers[name]]

    monkeypatch.setattr(startup.socket, "getaddrinfo", fake_getaddrinfo)
    found = startup.resolve_at_start(["www.example.test", "local.test"],
                                       ["127.0.0.1 localhost\n# x\n198.18.0.9 Local.Test. other\nbad line\n"])
    ip = ipaddress.ip_address
    assert found == {"www.example.test": {ip("93.184.215.14"), ip("2606:4700::1111")},
                     "local.test": {ip("198.18.0.9")}}


@needs_loopback
def test_start_resolution_asks_the_forced_resolver_not_getaddrinfo(monkeypatch):
    """The first forced resolver is silent, the second (a server on loopback here) answers."""
    import struct
    import threading

    def no_getaddrinfo(*args, **kwargs):
        raise AssertionError("getaddrinfo asked the host's resolvers")

    monkeypatch.setattr(startup.socket, "getaddrinfo", no_getaddrinfo)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    server.bind(("::1", 0))
    asked = []

    def serve():
        for _ in range(2):
            data, peer = server.recvfrom(4096)
            end = data.index(b"\0", 12) + 1
            qtype, = struct.unpack_from("!H", data, end)
            asked.append(qtype)
            rdata = bytes([198, 51, 100, 9]) if qtype == 1 else b""
            reply = data[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if rdata else 0, 0, 0) + data[12:end + 4]
            if rdata:
                reply += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + rdata
            server.sendto(reply, peer)

    thread = threading.Thread(target=serve)
    thread.start()
    from netwrap.dns import lookup

    real = lookup.addresses
    ports = {"127.0.0.1": silent.getsockname()[1], "::1": server.getsockname()[1]}
    monkeypatch.setattr(lookup, "addresses", lambda server_, name: real(server_, name, port=ports[server_],
                                                                        timeout=0.5))
    try:
        found = startup.resolve_at_start(["api.example.test"], forced=["127.0.0.1", "::1"])
    finally:
        thread.join(5)
        silent.close()
        server.close()
    assert found == {"api.example.test": {ipaddress.ip_address("198.51.100.9")}}
    assert sorted(asked) == [1, 28]
