"""Network policy end to end: presets, rules, tamper resistance, flow log, summary.

Every test runs over every shipped backend (the `backend` fixture), most
rootless and rootful, and checks what the world's servers logged: a refused
flow must not have reached anything. Refusals must be fast (connection
refused or an ICMP error), never a timeout, so every probe is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from types import SimpleNamespace

import pytest
from test_tunrelay import path_without_nft

from world.harness import World

# A refused flow fails with an error that says so (connection refused, an ICMP
# error, EPERM from the firewall), never with a timeout: the probes tell the
# two apart by the error's type or the program's words, not by the clock.
# Only name resolution, whose failure is silent in getent, is timed: the
# resolver's own timeout (5 s a try) is what "at once" is measured against.
RESOLVER_TIMEOUT = 5.0

# Runs in the sandbox: each argument is a JSON action; prints one JSON list of
# {"result": "ok..." | error name, "seconds": t, ...}. Errors are named by
# their type (ConnectionRefusedError, PermissionError, gaierror, ...).
PROBE = r"""
import json, socket, ssl, subprocess, sys, time, urllib.error, urllib.request
TIMEOUT = 5

def name(exc):
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    return type(exc).__name__

def http(url, cafile=None):
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    with urllib.request.urlopen(url, timeout=TIMEOUT, context=ctx) as r:
        body = r.read()
        return "ok %d %s" % (r.status, body.decode().strip() if len(body) < 200 else "%d bytes" % len(body))

def udp(host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.connect((host, port))
        s.send(b"probe")
        return "ok " + s.recv(100).decode(errors="replace")

def tcp(host, port):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect((host, port))
        return "ok"

def run(*argv):
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    return {"status": done.returncode, "out": done.stdout + done.stderr}

def error_line(*argv):
    # Time until the program reports an error (ping's sendmsg failure or ICMP
    # error); its own timeout comes later and does not count.
    p = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line, took = "", None
    for text in p.stdout:
        if any(m in text.lower() for m in ("not permitted", "filtered", "unreachable", "prohibited")):
            line, took = text.strip(), time.monotonic() - t0
            break
    p.stdout.read()
    return {"line": line, "status": p.wait(30), "first": took}

out = []
for action in sys.argv[1:]:
    kind, *args = json.loads(action)
    t0 = time.monotonic()
    try:
        result = globals()[kind](*args)
    except Exception as exc:
        result = name(exc)
    entry = result if isinstance(result, dict) else {"result": result}
    entry["seconds"] = time.monotonic() - t0
    out.append(entry)
print(json.dumps(out))
"""


def probe(world: World, backend: str, flags: list[str], actions: list[list], *, user: bool = True,
          expect_status: int = 0, **kw) -> list[dict]:
    done = world.netwrap(*backend.argv, *flags, "--", world.python, "-c", PROBE,
                         *[json.dumps(a) for a in actions], user=user, **kw)
    assert done.returncode == expect_status, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def refused(entry: dict, *errors: str) -> bool:
    errors = errors or ("ConnectionRefusedError",)
    return entry.get("result") in errors


def dig_refused(entry: dict) -> bool:
    """dig failed, and not by waiting out its timeout (";; connection timed out")."""
    return entry["status"] != 0 and "timed out" not in entry["out"]


def ping_refused(entry: dict) -> bool:
    """ping failed, and said why (EPERM at sendmsg or an ICMP error) rather than staying silent."""
    return entry["status"] != 0 and entry["first"] is not None


def locals_seen(records: list[dict]) -> set[str]:
    return {r["local"] for r in records}


def http(url: str) -> list:
    return ["http", url]


# -- presets ---------------------------------------------------------------------------------------

def test_offline_refuses_everything(world: World, backend: str, as_user: bool) -> None:
    mark = world.mark()
    results = probe(world, backend, ["--offline"], [
        http(f"http://{World.WORLD_V4}/hello"),
        http(f"http://[{World.WORLD_V6}]/hello"),
        ["error_line", "ping", "-c", "1", "-W", "5", World.WORLD_V4],
        ["run", "dig", "+time=5", "+tries=1", "www.example.test"],
        ["run", "dig", "+time=5", "+tries=1", f"@{World.DNS_V4}", "www.example.test"],
        ["run", "getent", "hosts", "www.example.test"],
        ["udp", World.WORLD_V4, World.ECHO_PORT],
    ], user=as_user)
    get4, get6, ping, dig, dig_direct, getent, udp = results
    assert refused(get4) and refused(get6), results
    # ping reports the refusal at once ("sendmsg: Operation not permitted") and fails.
    assert ping_refused(ping), ping
    for d in (dig, dig_direct):
        assert dig_refused(d), d
    assert getent["status"] != 0 and getent["seconds"] < RESOLVER_TIMEOUT, getent
    assert refused(udp, "PermissionError", "ConnectionRefusedError"), udp
    assert world.http_log(since=mark) == []
    assert world.dns_log(since=mark) == [] and world.resolver_log(since=mark) == []
    assert world.echo_log(since=mark) == []


def test_block_private(world: World, backend: str, as_user: bool) -> None:
    mark = world.mark()
    results = probe(world, backend, ["--block-private"], [
        http("http://10.20.30.40/hello"),
        http("http://192.168.77.1/hello"),
        http("http://172.16.0.1/hello"),
        http("http://[fd12:3456::1]/hello"),
        http(f"http://[::ffff:10.20.30.40]/hello"),
        ["udp", "10.20.30.40", World.ECHO_PORT],
        http(f"http://{World.WORLD_V4}/hello"),
        ["run", "getent", "hosts", "www.example.test"],  # the resolver stays reachable
    ], user=as_user)
    *blocked, udp, allowed, getent = results
    assert all(refused(r) for r in blocked), blocked
    # A refused UDP send fails at once, locally, and the socket then reads the ICMP error.
    assert refused(udp, "PermissionError", "ConnectionRefusedError"), udp
    assert allowed["result"] == "ok 200 hello from the world", allowed
    assert getent["status"] == 0, getent
    assert locals_seen(world.http_log(since=mark)) == {World.WORLD_V4}
    assert world.echo_log(since=mark) == []


# Every address through which some backend could reach the host: its own
# loopback (pasta can forward it), the gateways pasta and slirp4netns map to
# the host, the host's own addresses (a backend connects to them from the host).
HOST_EXPOSING = ["127.0.0.1", "::1", "192.0.2.1", "2001:db8:ff::1", "10.0.2.2", "fd00::2",
                 World.HOST_V4, World.HOST_V6, World.HOST_LO_V4, World.HOST_LO_V6]
# The host's own addresses (its interface's, and its lo's outside 127/8 and ::1).
HOST_OWN = [World.HOST_V4, World.HOST_V6, World.HOST_LO_V4, World.HOST_LO_V6]


@pytest.mark.parametrize("preset", ["--block-private", "--offline"])
def test_block_private_closes_every_way_to_the_host(world: World, backend: str, as_user: bool, preset: str) -> None:
    # A service on all of the host's addresses: without a preset every backend
    # reaches it through the host's own addresses; with one, none does.
    port = 20000 + (os.getpid() * 11 + int(time.time())) % 20000
    with world.spawn_server(ns="host", http=[("::", port)]) as server:
        def url(a: str) -> list:
            return http(f"http://[{a}]:{port}/hello" if ":" in a else f"http://{a}:{port}/hello")
        open_results = probe(world, backend, [], [url(a) for a in HOST_OWN], user=as_user)
        reached = server.log("http")
        results = probe(world, backend, [preset], [url(a) for a in HOST_EXPOSING], user=as_user)
        seen = server.log("http")[len(reached):]
    # Without a preset: reached, and the host's server logged each address.
    assert [r["result"] for r in open_results] == ["ok 200 hello from the world"] * len(HOST_OWN), open_results
    assert sorted(r["local"] for r in reached) == sorted(HOST_OWN)
    assert [a for a, r in zip(HOST_EXPOSING, results) if r["result"].startswith("ok")] == [], results
    # Refused, each of them: an error, not a timeout.
    assert [r["result"] for r in results if r["result"] == "TimeoutError"] == [], list(zip(HOST_EXPOSING, results))
    assert seen == []


@pytest.mark.parametrize("target, address", [
    ("169.254.169.254", "169.254.169.254"),
    ("metadata.example.test", "169.254.169.254"),
    ("[fd00:ec2::254]", "fd00:ec2::254"),
    ("100.100.100.200", "100.100.100.200"),
], ids=["address", "name", "aws-ipv6", "alibaba"])
def test_block_metadata(world: World, backend: str, as_user: bool, target: str, address: str) -> None:
    mark = world.mark()
    [plain] = probe(world, backend, [], [http(f"http://{target}/hello")], user=as_user)
    assert plain["result"] == "ok 200 hello from the world", plain
    assert locals_seen(world.http_log(since=mark)) == {address}
    mark = world.mark()
    [blocked] = probe(world, backend, ["--block-metadata"], [http(f"http://{target}/hello")], user=as_user)
    assert refused(blocked), blocked
    assert world.http_log(since=mark) == []


@pytest.fixture
def metadata_on_host_lo(world: World):
    """169.254.169.254 on the world host's lo (as some cloud agents set it up), for one test."""
    added = world.run(["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"], user=False)
    assert added.returncode == 0, added.stderr
    try:
        yield "169.254.169.254"
    finally:
        world.run(["ip", "addr", "del", "169.254.169.254/32", "dev", "lo"], user=False)


def test_block_metadata_on_the_hosts_lo(world: World, backend: str, as_user: bool, metadata_on_host_lo: str) -> None:
    port = 20000 + (os.getpid() * 13 + int(time.time())) % 20000
    url = http(f"http://{metadata_on_host_lo}:{port}/hello")
    with world.spawn_server(ns="host", http=[(metadata_on_host_lo, port)]) as server:
        mark = world.mark()
        [plain] = probe(world, backend, [], [url], user=as_user)
        reached = server.log("http")
        [blocked] = probe(world, backend, ["--block-metadata"], [url], user=as_user)
        seen = server.log("http")[len(reached):]
    # A host address like any other: reached without the preset ...
    assert plain["result"] == "ok 200 hello from the world", plain
    assert [r["local"] for r in reached] == [metadata_on_host_lo]
    # ... and refused with it, at once, the host's server seeing nothing.
    assert refused(blocked), blocked
    assert seen == []
    assert world.http_log(since=mark) == []  # nor did the world's internet


# -- rules ---------------------------------------------------------------------------------------------

def test_allow_list_of_addresses(world: World, backend: str, as_user: bool) -> None:
    mark = world.mark()
    results = probe(world, backend, ["--allow", f"{World.WORLD_V4}:80", "--allow", f"udp://{World.DNS_V4}:53"], [
        http(f"http://{World.WORLD_V4}/hello"),
        ["run", "dig", "+short", "+time=5", "+tries=1", f"@{World.DNS_V4}", "www.example.test"],
        http(f"http://{World.WORLD_V4}:8080/hello"),
        http("http://203.0.113.80/hello"),
        http(f"http://[{World.WORLD_V6}]/hello"),
        ["run", "dig", "+short", "+tcp", "+time=5", "+tries=1", f"@{World.DNS_V4}", "www.example.test"],
        ["udp", World.WORLD_V4, World.ECHO_PORT],
    ], user=as_user)
    get, dig, alt_port, other, v6, dig_tcp, udp = results
    assert get["result"] == "ok 200 hello from the world", get
    assert dig["status"] == 0 and dig["out"].split() == [World.WORLD_V4], dig
    assert refused(alt_port) and refused(other) and refused(v6), results
    assert dig_refused(dig_tcp), dig_tcp  # only UDP was allowed
    assert refused(udp, "PermissionError", "ConnectionRefusedError"), udp
    http_seen = [(r["local"], r["port"]) for r in world.http_log(since=mark)]
    assert http_seen == [(World.WORLD_V4, 80)]
    dns_seen = [(r["proto"], r["local"]) for r in world.dns_log(since=mark) if r["qname"] == "www.example.test"]
    assert ("udp", World.DNS_V4) in dns_seen and ("tcp", World.DNS_V4) not in dns_seen, dns_seen
    assert world.echo_log(since=mark) == []


def test_allow_a_hostname(world: World, backend: str, as_user: bool) -> None:
    mark = world.mark()
    ca = str(world.ca_file)
    results = probe(world, backend, ["--allow", "www.example.test:443"], [
        ["http", "https://www.example.test/hello", ca],
        http("http://www.example.test/hello"),
        ["http", "https://other.example.test/hello", ca],
        ["http", "https://dns.example.test/hello", ca],
    ], user=as_user)
    allowed, wrong_port, other, dns_host = results
    assert allowed["result"] == "ok 200 hello from the world", allowed
    assert refused(wrong_port) and refused(other) and refused(dns_host), results
    seen = {(r["local"], r["listener"]) for r in world.http_log(since=mark)}
    assert seen in ({(World.WORLD_V4, "https")}, {(World.WORLD_V6, "https")}), seen


def test_allowed_hostname_under_forced_dns(world: World, backend: str, as_user: bool) -> None:
    # --dns sends every DNS flow to the forced resolver; the proxy sits in front
    # of it, so answers to queries addressed anywhere still open the name's sets.
    mark = world.mark()
    results = probe(world, backend, ["--dns", World.DNS_V4, "--allow", "www.example.test:80"], [
        ["run", "dig", "+short", "+time=5", "+tries=1", "@8.8.8.8", "www.example.test"],
        http("http://www.example.test/hello"),
        http("http://other.example.test/hello"),
    ], user=as_user)
    dig, allowed, other = results
    assert dig["status"] == 0 and World.WORLD_V4 in dig["out"].split(), dig
    assert allowed["result"] == "ok 200 hello from the world" and refused(other), results
    asked = {r["local"] for r in world.dns_log(since=mark)}
    assert asked == {World.DNS_V4}, asked
    assert locals_seen(world.http_log(since=mark)) <= {World.WORLD_V4, World.WORLD_V6}


MOVING = "moving.example.test"
MOVER = r"""
import json, sys, urllib.request
def get(url):
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode().strip()
    except Exception as exc:
        return type(getattr(exc, "reason", exc)).__name__
print("ready", flush=True)
sys.stdin.readline()  # the test has changed the name's answer meanwhile
print(json.dumps([get(u) for u in sys.argv[1:]]), flush=True)
"""


def test_allowed_name_follows_its_changing_answer(world: World, backend: str, as_user: bool) -> None:
    # Resolved at start to .10; by the time the command looks it up, the
    # world answers .11: the sandbox's answer is what counts, and the start
    # answer stays allowed (the command might still hold it). .12 never is.
    first, later, never = "203.0.113.10", "203.0.113.11", "203.0.113.12"
    with world.zone_records({MOVING: {"A": [first]}}):
        proc = world.popen(world.netwrap_cmd(*backend.argv, "--allow", f"{MOVING}:80", "--", world.python,
                                             "-c", MOVER, f"http://{MOVING}/hello", f"http://{first}/hello",
                                             f"http://{never}/hello"),
                           user=as_user, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        try:
            assert proc.stdout.readline() == "ready\n"
            with world.zone_records({MOVING: {"A": [later]}}):
                mark = world.mark()
                out, err = proc.communicate("go\n", timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out) == ["hello from the world", "hello from the world", "ConnectionRefusedError"]
    assert [r["local"] for r in world.http_log(since=mark)] == [later, first]


LEARNER = r"""
import json, subprocess, sys, urllib.request
def get(url):
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode().strip()
    except Exception as exc:
        return type(getattr(exc, "reason", exc)).__name__
later, dig = sys.argv[1], sys.argv[2:]
print("ready", flush=True)
sys.stdin.readline()  # the test has changed the name's answer meanwhile
before = get(f"http://{later}/hello")
answer = subprocess.run(dig, capture_output=True, text=True).stdout.split()
print(json.dumps([before, answer, get(f"http://{later}/hello")]), flush=True)
"""
ALLOWED_DNS_SERVER = "203.0.113.53"


@pytest.mark.parametrize("how", ["tcp", "allowed-server"])
def test_names_learned_over_tcp_and_from_an_allowed_server(world: World, backend, as_user: bool, how: str) -> None:
    # The name answers .20 at start and .21 once the command asks, over TCP
    # to its resolver, or over UDP to another server an --allow opens: .21
    # is refused until that answer came back, and allowed after it.
    first, later = "203.0.113.20", "203.0.113.21"
    dig = ["dig", "+short", "+time=5", "+tries=1"]
    dig += ["+tcp", MOVING] if how == "tcp" else [f"@{ALLOWED_DNS_SERVER}", MOVING]
    extra = ["--allow", f"udp://{ALLOWED_DNS_SERVER}:53"] if how == "allowed-server" else []
    with world.zone_records({MOVING: {"A": [first]}}):
        proc = world.popen(world.netwrap_cmd(*backend.argv, "--allow", f"{MOVING}:80", *extra, "--",
                                             world.python, "-c", LEARNER, later, *dig),
                           user=as_user, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        try:
            assert proc.stdout.readline() == "ready\n"
            with world.zone_records({MOVING: {"A": [later]}}):
                mark = world.mark()
                out, err = proc.communicate("go\n", timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert json.loads(out) == ["ConnectionRefusedError", [later], "hello from the world"]
    assert [r["local"] for r in world.http_log(since=mark)] == [later]
    queries = [r for r in world.dns_log(since=mark) if r["qname"] == MOVING]
    if how == "tcp":
        # Through the host's stub resolver, over TCP all the way.
        stub = [r["proto"] for r in world.resolver_log(since=mark) if r["qname"] == MOVING]
        assert stub == ["tcp"] and [(r["proto"], r["local"]) for r in queries] == [("tcp", World.DNS_V4)]
    else:
        assert [(r["proto"], r["local"]) for r in queries] == [("udp", ALLOWED_DNS_SERVER)]


def test_deny_rules_leave_the_rest_open(world: World, backend: str, as_user: bool) -> None:
    mark = world.mark()
    results = probe(world, backend, ["--deny", "2001:db8::/32", "--deny", "icmp://*"], [
        http(f"http://[{World.DNS_V6}]/hello"),
        http("http://[2001:db8:1::80]/hello"),
        ["error_line", "ping", "-c", "1", "-W", "5", World.WORLD_V4],
        ["error_line", "ping", "-6", "-c", "1", "-W", "5", World.WORLD_V6],
        http(f"http://{World.WORLD_V4}/hello"),
        http(f"http://[{World.WORLD_V6}]/hello"),
        ["run", "dig", "+short", "+time=5", "+tries=1", "www.example.test"],
        ["udp", "2001:db8:1::7", World.ECHO_PORT],  # --deny's default scheme is tcp://
    ], user=as_user)
    v6_dns_host, v6_other, ping4, ping6, get4, get6, dig, udp = results
    assert refused(v6_dns_host) and refused(v6_other), results
    for ping in (ping4, ping6):
        assert ping_refused(ping), ping
    assert get4["result"] == get6["result"] == "ok 200 hello from the world", results
    assert dig["status"] == 0 and World.WORLD_V4 in dig["out"], dig
    assert udp["result"] == "ok probe", udp
    assert locals_seen(world.http_log(since=mark)) == {World.WORLD_V4, World.WORLD_V6}


# -- the command cannot lift the policy ------------------------------------------------------------------

TAMPER = r"""
nft flush ruleset; echo "nft=$?"
nft delete table inet netwrap_policy; echo "nft_delete=$?"
ip route replace default via 192.0.2.1; echo "route=$?"
ip route replace 10.20.30.0/24 dev lo; echo "route_lo=$?"
ip -6 route replace default via fe80::1 dev lo; echo "route6=$?"
ip -6 addr add 2001:db8:99::1/64 dev lo; echo "addr6=$?"
ip link set lo down; echo "link=$?"
"$PY" -c '
import ctypes, socket
for fam, typ, proto in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
                        (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP),
                        (socket.AF_PACKET, socket.SOCK_RAW, 0x0300)):
    try:
        socket.socket(fam, typ, proto); print("raw=open")
    except OSError as e:
        print("raw=%d" % e.errno)
try:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 0x200000); print("mark=set")
except OSError as e:
    print("mark=%d" % e.errno)
libc = ctypes.CDLL(None, use_errno=True)
print("ptrace=%d" % (libc.ptrace(16, 1, 0, 0) or 0))
'
unshare -rn sh -c "ip link set lo up; curl -s -m 3 http://10.20.30.40/hello"; echo "unshare=$?"
curl -s -m 3 http://10.20.30.40/hello; echo "after=$?"
curl -s -m 3 -g "http://[fd12:3456::40]/hello"; echo "after6=$?"
dig +tcp +time=3 +tries=1 @10.20.30.40 www.example.test >/dev/null; echo "dns_tcp=$?"
dig +time=3 +tries=1 @10.20.30.40 www.example.test >/dev/null; echo "dns_udp=$?"
curl -s -m 3 http://93.184.215.14/hello
"""


def test_the_command_cannot_lift_the_policy(world: World, backend: str, as_user: bool) -> None:
    mark = world.mark()
    done = world.netwrap(*backend.argv, "--block-private", "--", "sh", "-c", TAMPER, user=as_user,
                         env={"PY": world.python})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    results = dict(line.split("=", 1) for line in lines if "=" in line)
    for key in ("nft", "nft_delete", "route", "route_lo", "route6", "addr6", "link"):
        assert results[key] != "0", (key, done.stdout, done.stderr)
    assert lines.count("raw=1") == 3, done.stdout  # EPERM for raw and packet sockets
    assert results["mark"] == "1", done.stdout  # SO_MARK (the DNS proxy's bit) needs CAP_NET_ADMIN
    assert results["ptrace"] != "0", done.stdout
    for key in ("unshare", "after", "after6", "dns_tcp", "dns_udp"):
        assert results[key] != "0", (key, done.stdout)
    assert lines[-1] == "hello from the world"  # the policy, not breakage, refused the rest
    reached = locals_seen(world.http_log(since=mark)) | locals_seen(world.dns_log(since=mark))
    assert reached == {World.WORLD_V4}, reached


# -- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--allow", "10.0.0.1/8"], "invalid --allow spec '10.0.0.1/8': host bits set"),
    (["--allow", "1.2.3.4:70000"], "invalid --allow spec '1.2.3.4:70000': port 70000 is out of range"),
    (["--deny", "example.test"], "invalid --deny spec 'example.test': hostname 'example.test' in --deny"),
    (["--allow", "http://x.test"], "invalid --allow spec 'http://x.test': unknown scheme 'http'"),
    (["--allow", "icmp://1.2.3.4:80"], "invalid --allow spec 'icmp://1.2.3.4:80': icmp rules take no port"),
    (["--allow", "2001:db8::1:80,443"], "must be in brackets, e.g. [2001:db8::1]:80,443"),
    (["--default-policy", "reject"], "invalid --default-policy 'reject': expected 'allow' or 'deny'"),
    (["--offline", "--allow", "1.2.3.4"], "--offline cannot be combined with --allow '1.2.3.4'"),
    (["--flow-log", "/nonexistent/dir/flows.jsonl"], "--flow-log '/nonexistent/dir/flows.jsonl': directory /nonexistent/dir does not exist"),
    (["--block-private", "--allow-host-loopback"], "--block-private cannot be combined with --allow-host-loopback"),
], ids=["host-bits", "port-range", "deny-hostname", "scheme", "icmp-port", "ipv6-brackets", "default-policy",
        "offline-allow", "flow-log-path", "private-host-loopback"])
def test_bad_policy_input_is_exit_2_nothing_started(world: World, args, message) -> None:
    bindir = world.user_dir("fakebin")
    marker = bindir / "started"
    for name in ("pasta", "slirp4netns"):
        (bindir / name).write_text(f"#!/bin/sh\necho started >> {marker}\nexit 1\n")
        (bindir / name).chmod(0o755)
    done = world.netwrap(*args, "--", "true", env={"PATH": f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("netwrap: error: "), done.stderr
    assert message in done.stderr, done.stderr
    assert not marker.exists()


# tunrelay enforces the policy in its own engine when nft is missing (see below).
@pytest.mark.parametrize("backend", ["pasta", "slirp4netns"])
def test_policy_without_nft_is_125_naming_the_package(world: World, backend: str) -> None:
    bindir = world.user_dir("bin")
    for name in ("sh", "true", "ip", "pasta", "passt", "slirp4netns", "dpkg-query"):
        for d in ("/usr/sbin", "/usr/bin"):
            if os.path.exists(f"{d}/{name}") and not (bindir / name).exists():
                (bindir / name).symlink_to(f"{d}/{name}")
    done = world.netwrap("--backend", backend, "--block-private", "--", "true", env={"PATH": str(bindir)})
    assert done.returncode == 125
    [line] = done.stderr.splitlines()
    assert line.startswith("netwrap: --block-private needs nftables") and "'nftables' package" in line, line


# -- tunrelay without nftables: its engine judges each new flow ------------------------------------------

TUNRELAY = SimpleNamespace(argv=["--backend", "tunrelay"])
ENGINE_NOTE = "network policy enforced by tunrelay's engine (no nftables)"


def test_tunrelay_engine_allow_list_without_nft(world: World, as_user: bool) -> None:
    helpers, env = world.helpers_from(path_without_nft(world, user=as_user), user=as_user)
    mark = world.mark()
    done = world.netwrap(*helpers, "--backend", "tunrelay", "--allow", f"{World.WORLD_V4}:80", "--summary", "--",
                         world.python, "-c", PROBE, *[json.dumps(a) for a in [
                             http(f"http://{World.WORLD_V4}/hello"),
                             http(f"http://{World.WORLD_V4}:8080/hello"),
                             http("http://203.0.113.80/hello"),
                         ]], user=as_user, env=env)
    assert done.returncode == 0, done.stderr
    allowed, other_port, other_host = json.loads(done.stdout)
    assert allowed["result"] == "ok 200 hello from the world", allowed
    assert refused(other_port) and refused(other_host), (other_port, other_host)
    assert ENGINE_NOTE in done.stderr, done.stderr
    [request] = world.http_log(since=mark)
    assert request["local"] == World.WORLD_V4 and request["path"] == "/hello", request


def test_tunrelay_engine_deny_icmp_and_offline_without_nft(world: World, as_user: bool) -> None:
    helpers, env = world.helpers_from(path_without_nft(world, user=as_user), user=as_user)
    mark = world.mark()
    [ping, get] = probe(world, TUNRELAY, [*helpers, "--deny", "icmp://*"], [
        ["error_line", "ping", "-c", "1", "-W", "5", World.WORLD_V4],
        http(f"http://{World.WORLD_V4}/hello"),
    ], user=as_user, env=env)
    assert ping_refused(ping), ping
    assert get["result"] == "ok 200 hello from the world", get
    assert locals_seen(world.http_log(since=mark)) == {World.WORLD_V4}  # only the ICMP rule refuses
    mark = world.mark()
    [offline] = probe(world, TUNRELAY, [*helpers, "--offline"], [http(f"http://{World.WORLD_V4}/hello")],
                      user=as_user, env=env)
    assert refused(offline), offline
    assert world.http_log(since=mark) == []


def test_tunrelay_flow_log_without_nft_is_125(world: World) -> None:
    log = world.user_dir("flows-no-nft") / "flows.jsonl"
    done = world.netwrap("--backend", "tunrelay", "--allow", f"{World.WORLD_V4}:80", "--flow-log", str(log),
                         "--", "true", env={"PATH": path_without_nft(world)})
    assert done.returncode == 125, done.stderr
    assert "--flow-log needs nftables" in done.stderr and "'nftables' package" in done.stderr
    assert not log.exists()  # a refused run leaves nothing behind


# -- flow log and summary --------------------------------------------------------------------------------

def test_flow_log_records_allowed_and_refused_flows(world: World, backend: str, as_user: bool) -> None:
    log = world.user_dir("flows") / "flows.jsonl"
    mark = world.mark()
    results = probe(world, backend, ["--allow", f"{World.WORLD_V4}:80", "--flow-log", str(log)], [
        http(f"http://{World.WORLD_V4}/bytes/20000"),
        http("http://203.0.113.80/hello"),
        ["udp", "203.0.113.81", World.ECHO_PORT],
    ], user=as_user)
    assert results[0]["result"].startswith("ok 200"), results
    [request] = world.http_log(since=mark)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert log.read_text().endswith("\n")
    allowed = [r for r in records if r["verdict"] == "allow" and r["destination"]["address"] == World.WORLD_V4]
    assert len(allowed) == 1, records
    a = allowed[0]
    assert a["protocol"] == "tcp" and a["destination"]["port"] == 80
    assert a["decided_by"] == f"--allow '{World.WORLD_V4}:80'"
    assert a["bytes_received"] > 20000 and 0 < a["bytes_sent"] < 5000, a
    assert a["packets_sent"] > 0 and a["packets_received"] > 0
    assert a["start"] <= a["end"]
    refused = {(r["protocol"], r["destination"]["address"]): r for r in records if r["verdict"] == "deny"}
    assert set(refused) == {("tcp", "203.0.113.80"), ("udp", "203.0.113.81")}, records
    for r in refused.values():
        assert r["decided_by"] == "default policy" and r["bytes_received"] == 0 and r["bytes_sent"] > 0, r
    assert refused[("tcp", "203.0.113.80")]["destination"]["port"] == 80
    for r in records:
        assert set(r) >= {"start", "end", "protocol", "source", "destination", "verdict", "decided_by",
                          "bytes_sent", "bytes_received"}, r


def test_summary_lists_controls_and_counts(world: World, backend: str) -> None:
    done = world.netwrap(*backend.argv, "--summary", "--block-private", "--block-metadata",
                         "--deny", "icmp://*", "--", "sh", "-c",
                         f"curl -s -m 3 http://{World.WORLD_V4}/hello; curl -s -m 3 http://10.20.30.40/; "
                         "curl -s -m 3 http://169.254.169.254/; true")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from the world\n", done.stderr
    report = {line.split(":", 2)[1].strip(): line.split(":", 2)[2].strip()
              for line in done.stderr.splitlines() if line.startswith("netwrap: ")}
    assert report["policy"] == "private ranges blocked; cloud metadata blocked; deny icmp://*; default allow", report
    assert report["flows"] == "1 allowed, 2 blocked", report
