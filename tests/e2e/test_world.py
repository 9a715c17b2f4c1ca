"""Tests of the test world itself (no netwrap): if these fail, e2e results mean nothing."""

from __future__ import annotations

import hashlib
import os
import pty
import random
import select
import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from world import bytegen, dnswire, guard
from world.addresses import HOST_IF, HOST_IF2, INET_IF, INET_IF2, ZONE
from world.harness import World

CURL = ["curl", "-sS", "--max-time", "10"]
DIG = ["dig", "+time=2", "+tries=1"]


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{result.args} exited {result.returncode}: {result.stderr}"
    return result.stdout


# -- HTTP, HTTPS -------------------------------------------------------------------------


@pytest.mark.parametrize("url_host, peer, local", [
    (World.WORLD_V4, World.HOST_V4, World.WORLD_V4),
    (f"[{World.WORLD_V6}]", World.HOST_V6, World.WORLD_V6),
], ids=["ipv4", "ipv6"])
def test_http_hello_reaches_the_world(world: World, url_host: str, peer: str, local: str) -> None:
    mark = world.mark()
    assert ok(world.run(CURL + [f"http://{url_host}/hello"])) == "hello from the world\n"
    [record] = world.http_log(since=mark)
    assert record["request"] == "GET /hello HTTP/1.1"
    assert (record["peer"], record["local"], record["port"], record["listener"]) == (peer, local, 80, "http")
    assert record["host"] == url_host


def test_any_address_answers_and_alt_port(world: World) -> None:
    mark = world.mark()
    assert ok(world.run(CURL + ["http://8.8.8.8:8080/hello"])) == "hello from the world\n"
    [record] = world.http_log(since=mark)
    assert (record["local"], record["port"]) == ("8.8.8.8", 8080)


def test_echo_and_404(world: World) -> None:
    body = ok(world.run(CURL + ["-H", "X-Probe: 42", f"http://{World.WORLD_V4}/echo"]))
    assert body.startswith("GET /echo HTTP/1.1\n")
    assert "X-Probe: 42\n" in body
    result = world.run(CURL + ["-o", "/dev/null", "-w", "%{http_code}", f"http://{World.WORLD_V4}/nothing"])
    assert ok(result) == "404"


def test_bytes_stream_matches_the_generator(world: World) -> None:
    size = 20 * 1024 * 1024 + 12345
    out = ok(world.run(["sh", "-c", f"curl -sS --max-time 30 http://{World.WORLD_V4}/bytes/{size} | sha256sum"]))
    assert out.split()[0] == bytegen.sha256_hex(size)


def test_https_by_name_through_the_host_resolver(world: World) -> None:
    mark = world.mark()
    out = ok(world.run(CURL + ["--cacert", str(world.ca_file), "https://www.example.test/hello"]))
    assert out == "hello from the world\n"
    [record] = world.http_log(since=mark)
    assert (record["listener"], record["port"], record["host"]) == ("https", 443, "www.example.test")
    assert record["peer"] in (World.HOST_V4, World.HOST_V6)
    names = {(r["qname"], r["upstream"]) for r in world.resolver_log(since=mark)}
    assert ("www.example.test", World.DNS_V4) in names
    assert any(r["qname"] == "www.example.test" for r in world.dns_log(since=mark))


@pytest.mark.parametrize("host", [World.WORLD_V4, f"[{World.WORLD_V6}]", "example.test"])
def test_https_certificate_covers_the_world_addresses(world: World, host: str) -> None:
    out = ok(world.run(CURL + ["--cacert", str(world.ca_file), f"https://{host}/hello"]))
    assert out == "hello from the world\n"


def test_https_rejects_a_name_outside_the_certificate(world: World) -> None:
    result = world.run(CURL + ["--cacert", str(world.ca_file), "--resolve", f"other.test:443:{World.WORLD_V4}",
                               "https://other.test/hello"])
    assert result.returncode != 0


# -- DNS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("server, qtype, expected", [
    (World.DNS_V4, "A", World.WORLD_V4),
    (World.DNS_V6, "AAAA", World.WORLD_V6),
], ids=["v4", "v6"])
def test_dig_is_answered_and_logged(world: World, proto: str, server: str, qtype: str, expected: str) -> None:
    mark = world.mark()
    flags = ["+tcp"] if proto == "tcp" else []
    out = ok(world.run(DIG + flags + ["+short", f"@{server}", "www.example.test", qtype]))
    assert out.split() == [expected]
    [record] = world.dns_log(since=mark)
    assert (record["proto"], record["local"], record["qname"], record["qtype"]) == (proto, server, "www.example.test", qtype)
    assert record["peer"] in (World.HOST_V4, World.HOST_V6)


def test_dns_nxdomain_and_other_names(world: World) -> None:
    out = ok(world.run(DIG + ["@9.9.9.9", "no-such-name.example.test", "A"]))
    assert "status: NXDOMAIN" in out
    out = ok(world.run(DIG + ["+short", "@9.9.9.9", "metadata.example.test", "A"]))
    assert out.split() == ["169.254.169.254"]
    out = ok(world.run(DIG + ["+short", "@9.9.9.9", "other.example.test", "AAAA"]))
    assert out.split() == []  # known name, no AAAA: empty NOERROR


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_the_host_resolver_forwards_to_the_world(world: World, proto: str) -> None:
    mark = world.mark()
    flags = ["+tcp"] if proto == "tcp" else []
    out = ok(world.run(DIG + flags + ["+short", f"@{World.HOST_RESOLVER}", "example.test", "AAAA"]))
    assert out.split() == [World.WORLD_V6]
    [forwarded] = world.resolver_log(since=mark)
    assert (forwarded["proto"], forwarded["peer"], forwarded["upstream"]) == (proto, "127.0.0.1", World.DNS_V4)
    [answered] = world.dns_log(since=mark)
    assert (answered["proto"], answered["local"], answered["peer"]) == (proto, World.DNS_V4, World.HOST_V4)


def test_getent_goes_through_the_host_resolver(world: World) -> None:
    mark = world.mark()
    out = ok(world.run(["getent", "hosts", "www.example.test"]))
    assert out.split()[0] in (World.WORLD_V4, World.WORLD_V6)
    records = world.resolver_log(since=mark)
    assert any(r["qname"] == "www.example.test" and r["local"] == World.HOST_RESOLVER for r in records)


def test_host_resolv_conf_is_a_symlink_to_the_stub(world: World) -> None:
    out = ok(world.run(["sh", "-c", "test -L /etc/resolv.conf && cat /etc/resolv.conf"]))
    assert out.strip() == f"nameserver {World.HOST_RESOLVER}"


# -- UDP echo, host services ---------------------------------------------------------------

ECHO_PROBE = """
import socket, sys
host = sys.argv[1]
family = socket.AF_INET6 if ':' in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((host, 7))  # a connected socket drops replies from any other source
s.send(b'ping ' + host.encode())
print(s.recv(100).decode())
"""


@pytest.mark.parametrize("address", ["8.8.8.8", World.WORLD_V4, "2001:4860:4860::8888"])
def test_udp_echo_answers_from_the_queried_address(world: World, address: str) -> None:
    mark = world.mark()
    assert ok(world.run([world.python, "-c", ECHO_PROBE, address])).strip() == f"ping {address}"
    [record] = world.echo_log(since=mark)
    assert record["local"] == address


def test_a_server_on_host_loopback_is_reachable_from_the_host(world: World) -> None:
    with world.spawn_server(ns="host", http=[("127.0.0.1", 0)]) as server:
        port = server.port("http")
        assert ok(world.run(CURL + [f"http://127.0.0.1:{port}/hello"])) == "hello from the world\n"
        [record] = server.log("http")
        assert (record["peer"], record["local"], record["port"]) == ("127.0.0.1", "127.0.0.1", port)
        # ... and it is not the internet's: the world's log did not see it.
        assert not any(r["port"] == port for r in world.http_log())


def test_a_server_spawned_in_the_internet_answers_every_address(world: World) -> None:
    with world.spawn_server(ns="inet", http=[("::", 0)]) as server:
        port = server.port("http")
        out = ok(world.run(CURL + [f"http://203.0.113.9:{port}/hello", f"http://[2001:db8::9]:{port}/hello"]))
        assert out == "hello from the world\n" * 2
        assert [r["local"] for r in server.log("http")] == ["203.0.113.9", "2001:db8::9"]


# -- running things: users, launcher, runtime ---------------------------------------------


def test_as_user_axis(world: World, as_user: bool) -> None:
    expected = str(world.user.uid) if as_user else "0"
    assert ok(world.run(["id", "-u"], user=as_user)).strip() == expected


def test_the_user_runs_the_runtime_copy_of_netwrap(world: World) -> None:
    out = ok(world.run([world.python, "-c", "import netwrap; print(netwrap.__file__)"]))
    assert out.strip() == str(world.runtime_dir / "netwrap" / "__init__.py")
    assert ok(world.run(["sh", "-c", "echo $HOME; pwd"])).split() == [str(world.user_home)] * 2


def test_the_host_sees_only_its_own_interfaces(world: World) -> None:
    assert ok(world.run(["ls", "/sys/class/net"])).split() == ["lo", HOST_IF, HOST_IF2]


SPOOF = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
s.bind((sys.argv[2], 0))
s.settimeout(2)
try:
    s.connect((sys.argv[3], 80))
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.mark.parametrize("far, second, first", [
    (World.WORLD_V4, "198.18.0.2", "192.0.2.2"),
    (World.WORLD_V6, "2001:db8:fe::2", "2001:db8:ff::2"),
], ids=["ipv4", "ipv6"])
def test_the_second_uplink_carries_what_is_bound_to_it_and_nothing_else(world: World, far: str, second: str,
                                                                         first: str) -> None:
    url = f"http://{far}/hello" if ":" not in far else f"http://[{far}]/hello"
    mark = world.mark()
    ok(world.run(["curl", "-sS", "-m", "5", url]))  # the default route: the first uplink
    ok(world.run(["curl", "-sS", "-m", "5", "--interface", f"if!{HOST_IF2}", url]))
    ok(world.run(["curl", "-sS", "-m", "5", "--interface", f"host!{second}", url]))  # by the source rule
    assert [r["peer"] for r in world.http_log(since=mark)] == [first, second, second]
    # The internet drops the second uplink's addresses when they come by the first veth.
    assert ok(world.run([world.python, "-c", SPOOF, HOST_IF, second, far])).strip() == "TimeoutError"
    assert ok(world.run([world.python, "-c", SPOOF, HOST_IF2, second, far])).strip() == "connected"


def test_launcher_resets_signals_and_keeps_the_process_group(world: World) -> None:
    status = ok(world.run(["cat", "/proc/self/status"]))
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["SigIgn"], 16) == 0 and int(fields["SigBlk"], 16) == 0
    process = world.popen(["sleep", "30"], stdin=subprocess.DEVNULL)
    try:
        assert os.getpgid(process.pid) == os.getpgrp()
        assert os.getsid(process.pid) == os.getsid(0)
    finally:
        process.kill()
        process.wait(5)


def test_launcher_keeps_the_callers_terminal(world: World) -> None:
    # What terminal tests rely on: the command is in the terminal's foreground group.
    argv = world.launcher_argv(["sh", "-c", 'tty; [ "$(ps -o tpgid= -p $$)" -eq "$(ps -o pgid= -p $$)" ] && echo foreground'])
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], deadline - time.monotonic())[0]:
                break
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side has closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    lines = output.decode().split()
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert lines[0].startswith("/dev/pts/") and lines[1] == "foreground"


def test_launcher_exit_statuses(world: World) -> None:
    assert world.run(["sh", "-c", "exit 7"]).returncode == 7
    assert world.run(["no-such-command-here"]).returncode == 127
    assert world.run(["true"], cwd="/no/such/dir").returncode == 120


def test_user_dir_belongs_to_the_user(world: World) -> None:
    path = world.user_dir("capture")
    ok(world.run(["touch", str(path / "file")]))
    assert (path / "file").stat().st_uid == world.user.uid


# -- the guard ------------------------------------------------------------------------------

CLEAN_V4 = [
    {"dst": "default", "gateway": "192.0.2.1", "dev": HOST_IF, "flags": []},
    {"dst": "192.0.2.0/24", "dev": HOST_IF, "protocol": "kernel", "scope": "link", "prefsrc": "192.0.2.2"},
    {"type": "local", "dst": "127.0.0.0/8", "dev": "lo", "table": "local", "protocol": "kernel"},
    {"type": "broadcast", "dst": "127.255.255.255", "dev": "lo", "table": "local"},
    {"type": "local", "dst": "192.0.2.2", "dev": HOST_IF, "table": "local"},
    {"type": "broadcast", "dst": "192.0.2.255", "dev": HOST_IF, "table": "local"},
]
CLEAN_V6 = [
    {"dst": "2001:db8:ff::/64", "dev": HOST_IF, "protocol": "kernel", "metric": 256},
    {"dst": "fe80::/64", "dev": HOST_IF, "protocol": "kernel", "metric": 256},
    {"dst": "default", "gateway": "2001:db8:ff::1", "dev": HOST_IF, "metric": 1024},
    {"type": "local", "dst": "::1", "dev": "lo", "table": "local"},
    {"type": "multicast", "dst": "ff00::/8", "dev": HOST_IF, "table": "local"},
]


def test_guard_accepts_a_sealed_table() -> None:
    assert guard.route_problems(CLEAN_V4 + CLEAN_V6, {HOST_IF}, "host") == []


def test_guard_accepts_routes_by_the_second_uplink_and_refuses_them_when_it_is_not_one() -> None:
    second = [
        {"dst": "default", "gateway": "198.18.0.1", "dev": HOST_IF2, "metric": 200, "flags": []},
        {"dst": "default", "gateway": "198.18.0.1", "dev": HOST_IF2, "table": "102", "flags": []},
        {"type": "local", "dst": "198.18.0.2", "dev": HOST_IF2, "table": "local"},
    ]
    assert guard.route_problems(CLEAN_V4 + CLEAN_V6 + second, {HOST_IF, HOST_IF2}, "host") == []
    assert len(guard.route_problems(CLEAN_V4 + CLEAN_V6 + second, {HOST_IF}, "host")) == 3


@pytest.mark.parametrize("extra", [
    {"dst": "10.0.0.0/8", "gateway": "10.1.1.1", "dev": "eth0", "flags": []},
    {"dst": "default", "gateway": "172.16.0.1", "dev": "eth0", "table": "100"},
    {"dst": "default", "nexthops": [{"gateway": "192.0.2.1", "dev": HOST_IF}, {"gateway": "10.0.0.1", "dev": "wlan0"}]},
    {"dst": "default", "nhid": 7, "flags": []},
    {"type": "nat", "dst": "10.0.0.0/8", "dev": HOST_IF},
    {"type": "local", "dst": "10.9.9.9", "dev": "eth1", "table": "local"},
], ids=["unicast-other-dev", "other-table", "multipath", "nexthop-object", "unknown-type", "local-on-other-dev"])
def test_guard_refuses_an_extra_route(extra: dict) -> None:
    problems = guard.route_problems(CLEAN_V4 + CLEAN_V6 + [extra], {HOST_IF, HOST_IF2}, "host")
    assert len(problems) == 1, problems


def test_guard_ignores_routes_that_drop() -> None:
    drops = [{"type": kind, "dst": "10.0.0.0/8"} for kind in ("unreachable", "prohibit", "blackhole", "throw")]
    assert guard.route_problems(CLEAN_V4 + drops, {HOST_IF}, "host") == []


def test_guard_refuses_extra_or_missing_interfaces() -> None:
    links = [{"ifname": "lo"}, {"ifname": HOST_IF}]
    assert guard.link_problems(links, {"lo", HOST_IF}, "host") == []
    assert guard.link_problems(links + [{"ifname": "eth0"}], {"lo", HOST_IF}, "host")
    assert guard.link_problems(links[:1], {"lo", HOST_IF}, "host")


def test_guard_checks_the_veth_pairing() -> None:
    host = [{"ifname": "lo", "ifindex": 1},
            {"ifname": HOST_IF, "ifindex": 5, "link_index": 9, "link_netnsid": 0, "linkinfo": {"info_kind": "veth"}}]
    inet = [{"ifname": "lo", "ifindex": 1}, {"ifname": INET_IF, "ifindex": 9, "link_index": 5, "link_netnsid": 0}]
    ids = [{"nsid": 0, "name": "nwi1"}]
    one = [(HOST_IF, INET_IF)]
    assert guard.pairing_problems(host, inet, ids, "nwi1", one) == []
    assert guard.pairing_problems(host, inet, ids, "nwi2", one)  # peer in another namespace
    assert guard.pairing_problems(host, inet[:1], ids, "nwi1", one)
    wrong = [dict(inet[1], link_index=6)]
    assert guard.pairing_problems(host, inet[:1] + wrong, ids, "nwi1", one)
    # Both uplinks by default: the second one's pair is checked too.
    assert guard.pairing_problems(host, inet, ids, "nwi1") == [
        f"the veth {HOST_IF2}-{INET_IF2} between host and internet is missing"]
    host2 = host + [{"ifname": HOST_IF2, "ifindex": 6, "link_index": 10, "link_netnsid": 0,
                     "linkinfo": {"info_kind": "veth"}}]
    inet2 = inet + [{"ifname": INET_IF2, "ifindex": 10, "link_index": 6, "link_netnsid": 0}]
    assert guard.pairing_problems(host2, inet2, ids, "nwi1") == []
    swapped = [dict(inet2[1], link_index=6), dict(inet2[2], link_index=5)]
    assert len(guard.pairing_problems(host2, inet[:1] + swapped, ids, "nwi1")) == 2


def test_guard_passes_the_live_world_and_refuses_it_with_one_more_route(world: World) -> None:
    assert guard.inspect(world.host_ns, world.inet_ns) == []
    live = guard._json("-4", "route", "show", "table", "all", ns=world.host_ns)
    assert guard.route_problems(live, {HOST_IF, HOST_IF2}, "host") == []
    extra = {"dst": "203.0.113.0/24", "gateway": "10.0.0.1", "dev": "eth9", "flags": []}
    assert guard.route_problems(live + [extra], {HOST_IF, HOST_IF2}, "host")
    # The live world's second uplink really is one: without it in the list, its routes are refused.
    assert any(HOST_IF2 in p for p in guard.route_problems(live, {HOST_IF}, "host"))


# -- pure pieces: DNS wire format, the byte generator -----------------------------------------


def test_dns_answer_keeps_the_question_and_its_case() -> None:
    query = dnswire.build_query(0x1234, "WwW.ExAmple.TEST", dnswire.TYPE_CODES["A"])
    reply, parsed, rcode = dnswire.answer(ZONE, query)
    assert parsed.name == "www.example.test" and rcode == dnswire.NOERROR
    assert reply[12 : 12 + len(parsed.question)] == query[12:]
    response = dnswire.parse_response(reply)
    assert (response.id, response.rcode, response.answers) == (0x1234, 0, [World.WORLD_V4])


def test_dns_records_carry_the_zones_ttl() -> None:
    query = dnswire.build_query(7, "short.example.test", dnswire.TYPE_CODES["A"])
    zone = {"short.example.test": {"A": ["203.0.113.20"], "TTL": ["5"]}}
    reply, _, _ = dnswire.answer(zone, query)
    # The record follows the header and the echoed question (as long as the query):
    # pointer to the name, type A, class IN, TTL 5.
    record = reply[len(query):]
    assert record[:10] == b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05"
    reply, _, _ = dnswire.answer({"short.example.test": {"A": ["203.0.113.20"]}}, query)
    assert reply[len(query) + 6:len(query) + 10] == b"\x00\x00\x00\x3c"  # the default, 60 s


def test_dns_nxdomain_and_formerr() -> None:
    _, _, rcode = dnswire.answer(ZONE, dnswire.build_query(1, "missing.example.test", 1))
    assert rcode == dnswire.NXDOMAIN
    reply, parsed, rcode = dnswire.answer(ZONE, b"\x00\x07" + b"\x00" * 4 + b"garbage!")
    assert parsed is None and rcode == dnswire.FORMERR and reply[:2] == b"\x00\x07"


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_dns_server_answers_any_bytes_with_a_matching_reply_or_nothing(message: bytes) -> None:
    reply, parsed, rcode = dnswire.answer(ZONE, message)  # any other exception fails the test
    if reply is None:
        # Silence only for what cannot be answered: no header, or a response (reflection loops).
        assert len(message) < 12 or message[2] & 0x80
        return
    response = dnswire.parse_response(reply)
    assert reply[:2] == message[:2] and response.rcode == rcode
    assert (parsed is None) == (rcode == dnswire.FORMERR)


def test_bytegen_is_deterministic_and_block_sensitive() -> None:
    size = 3 * bytegen.BLOCK_SIZE + 17
    data = bytegen.data(size)
    assert len(data) == size and hashlib.sha256(data).hexdigest() == bytegen.sha256_hex(size)
    assert bytegen.block(0) != bytegen.block(1)
    swapped = bytes(bytegen.block(1)) + bytes(bytegen.block(0))
    assert hashlib.sha256(swapped).hexdigest() != bytegen.sha256_hex(2 * bytegen.BLOCK_SIZE)
    assert len({bytes(bytegen.block(random.randrange(1 << 16))) for _ in range(64)}) > 60
