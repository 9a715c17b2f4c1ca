"""The DNS path under a policy: --dns-allowed-only, learned addresses' timeouts, flood bounds.

Each test runs over every backend, rootless and as root, and asserts on what
the world's DNS and web servers saw.
"""

from __future__ import annotations

import json
import subprocess

import psutil
from test_policy import dig_refused, http, probe

from world.harness import World

ALLOWED = "www.example.test"


def test_dns_allowed_only_refuses_other_names_before_any_resolver(world: World, backend: str,
                                                                 as_user: bool) -> None:
    mark = world.mark()
    results = probe(world, backend, ["--allow", f"{ALLOWED}:80", "--dns-allowed-only"], [
        ["run", "dig", "+time=5", "+tries=1", "other.example.test"],
        ["run", "dig", "+time=5", "+tries=1", "+tcp", "other.example.test"],
        ["run", "dig", "+short", "+time=5", "+tries=1", ALLOWED],
        http(f"http://{ALLOWED}/hello"),
    ], user=as_user)
    other, other_tcp, allowed, get = results
    assert "status: REFUSED" in other["out"], other
    assert dig_refused(other_tcp), other_tcp  # TCP DNS goes around the proxy: refused outright
    assert allowed["status"] == 0 and allowed["out"].split() == [World.WORLD_V4], allowed
    assert get["result"] == "ok 200 hello from the world", results
    asked = [r["qname"] for r in world.dns_log(since=mark)]
    assert "other.example.test" not in asked and ALLOWED in asked, asked
    [request] = world.http_log(since=mark)
    assert request["path"] == "/hello" and request["local"] in (World.WORLD_V4, World.WORLD_V6), request


def test_without_dns_allowed_only_any_name_reaches_the_world(world: World, backend: str, as_user: bool) -> None:
    # What the README says DNS carries when the option is off.
    mark = world.mark()
    [other] = probe(world, backend, ["--allow", f"{ALLOWED}:80"], [
        ["run", "dig", "+time=5", "+tries=1", "data-in-a-name.example.test"],
    ], user=as_user)
    assert "status: NXDOMAIN" in other["out"], other
    assert "data-in-a-name.example.test" in [r["qname"] for r in world.dns_log(since=mark)]


SHORT, LONG = "short-ttl.example.test", "long-ttl.example.test"

# Runs in the sandbox as root of it (--as-root): waits until the test has put
# the names in the world's zone, looks them up through the sandbox's DNS, and
# prints the name sets as the kernel holds them.
LIST_SETS = r"""
import subprocess, sys
print("ready", flush=True)
sys.stdin.readline()
for name in sys.argv[1:]:
    subprocess.run(["dig", "+short", "+time=5", "+tries=1", name], check=True, capture_output=True)
for s in ("name_1_v4", "name_2_v4"):
    print(subprocess.run(["nft", "list", "set", "inet", "netwrap_policy", s], check=True,
                         capture_output=True, text=True).stdout, flush=True)
"""


def test_learned_addresses_carry_their_ttl_with_a_floor(world: World, backend: str, as_user: bool) -> None:
    proc = world.popen(world.netwrap_cmd(*backend.argv, "--as-root", "--allow", f"{SHORT}:80",
                                         "--allow", f"{LONG}:80", "--", world.python, "-c", LIST_SETS,
                                         SHORT, LONG),
                       user=as_user, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        # Not in the zone at start: nothing is resolved then, all comes from the answers below.
        with world.zone_records({SHORT: {"A": ["203.0.113.31"], "TTL": ["5"]},
                                 LONG: {"A": ["203.0.113.32"], "TTL": ["300"]}}):
            out, err = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    # nft prints the timeout it was given and the time left: TTL 5 s -> the 60 s floor; 300 s kept.
    assert "203.0.113.31 timeout 1m expires" in out, out
    assert "203.0.113.32 timeout 5m expires" in out, out


# Runs in the sandbox: resolves the allowed name (before the flood), says
# "ready", and on "go" floods its resolver with FLOOD_COUNT datagrams (random
# names, one in ten malformed) for at most FLOOD_SECONDS, fetching /hello by
# address meanwhile; then fetches by name, prints the results, and waits for
# the test to measure netwrap before it ends.
FLOOD = r"""
import json, os, random, socket, sys, threading, time, urllib.request
name, count, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
address = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
resolver = next(l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver") and "." in l)

def get(url):
    try:
        return urllib.request.urlopen(url, timeout=10).read().decode().strip()
    except Exception as exc:
        return type(getattr(exc, "reason", exc)).__name__

print("ready", flush=True)
sys.stdin.readline()
done = threading.Event()
during = []
def fetch():
    while not done.is_set():
        during.append(get("http://%s/hello" % address))
        time.sleep(0.2)
fetcher = threading.Thread(target=fetch)
fetcher.start()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
sent, t0 = 0, time.monotonic()
while sent < count and time.monotonic() - t0 < limit:
    if sent % 10 == 9:
        data = os.urandom(random.randrange(1, 600))
    else:
        label = os.urandom(20).hex().encode()
        data = (os.urandom(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + bytes([len(label)]) + label
                + b"\x07example\x04test\x00\x00\x01\x00\x01")
    try:
        s.sendto(data, (resolver, 53))
        sent += 1
    except BlockingIOError:
        time.sleep(0.001)
    try:
        while True:
            s.recv(4096)
    except BlockingIOError:
        pass
done.set()
fetcher.join()
after = get("http://%s/hello" % name)
print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0, "during": during, "after": after}), flush=True)
sys.stdin.readline()
"""
FLOOD_COUNT = 50_000
FLOOD_SECONDS = 20.0
# What the flood may add to netwrap's resident memory: the DNS path's own
# bounds (4096 pending queries of a few hundred bytes each) come to a few MiB.
RSS_GROWTH_BOUND = 64 << 20


def test_a_dns_flood_keeps_netwrap_bounded_and_allowed_traffic_flowing(world: World, backend: str,
                                                                       as_user: bool) -> None:
    proc = world.popen(world.netwrap_cmd(*backend.argv, "--allow", f"{ALLOWED}:80", "--", world.python, "-c",
                                         FLOOD, ALLOWED, str(FLOOD_COUNT), str(FLOOD_SECONDS)),
                       user=as_user, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    try:
        netwrap = psutil.Process(proc.pid)  # the launcher execs netwrap: the same pid
        assert proc.stdout.readline() == "ready\n"
        assert "netwrap" in " ".join(netwrap.cmdline())
        before = netwrap.memory_info().rss
        mark = world.mark()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        result = json.loads(proc.stdout.readline())
        after = netwrap.memory_info().rss
        out, err = proc.communicate("end\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert result["sent"] == FLOOD_COUNT, result
    assert after - before < RSS_GROWTH_BOUND, (before, after)
    assert "hello from the world" in result["during"], result
    assert result["after"] == "hello from the world", result
    # The flood went through the DNS path to the world (much of it is dropped
    # on the way, by design: socket buffers and the pending bound).
    flooded = [r for r in world.dns_log(since=mark) if len((r["qname"] or "").split(".")[0]) == 40]
    assert len(flooded) > 100, len(flooded)
    seen = world.http_log(since=mark)
    assert len([r for r in seen if r["path"] == "/hello"]) == result["during"].count("hello from the world") + 1


# Runs in the sandbox: one dig per name, one after the other.
DIG_EACH = r"""
import subprocess, sys
for name in sys.argv[1:]:
    subprocess.run(["dig", "+short", "+time=5", "+tries=1", name], capture_output=True)
"""


def test_upstream_queries_leave_from_many_source_ports(world: World, backend: str, as_user: bool) -> None:
    names = [f"port-{i}.example.test" for i in range(32)]
    mark = world.mark()
    done = world.netwrap(*backend.argv, "--allow", f"{ALLOWED}:80", "--", world.python, "-c", DIG_EACH, *names,
                         user=as_user)
    assert done.returncode == 0, done.stderr
    # What the host's resolver saw, past the backend: the port each query came from.
    ports = [r["peer_port"] for r in world.resolver_log(since=mark) if r["qname"] in names]
    assert len(ports) >= len(names), ports
    assert len(set(ports)) >= 8, ports  # one fixed socket would show 1
