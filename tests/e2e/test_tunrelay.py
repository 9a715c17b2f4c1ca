"""tunrelay end to end, on both TCP paths: real clients, big transfers, fast
refusals, the no-helper fallback, and hostile packets from inside.

The conformance suite (test_foundation, test_dns_hosts, test_udp_icmp) runs
tunrelay too; these are the checks that are tunrelay's own.  Load tests are
bounded: wrk and iperf3 run a few seconds each, the flood 100,000 packets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tool_path import path_without
from world import bytegen
from world.harness import World

PATHS = ["tproxy", "nat"]
FLOOD = Path(__file__).resolve().parent / "tunrelay_flood.py"
_NO_NFT: dict[tuple[int, bool], str] = {}


@pytest.fixture(params=PATHS)
def path(request: pytest.FixtureRequest) -> str:
    return request.param


def path_without_nft(world: World, *, user: bool = True) -> str:
    """A PATH with every program of the system but nft: tunrelay then takes
    the TUN NAT path, as on a machine without nftables. user=False: root's
    own directory, for --helper-path as root (World.helpers_from)."""
    if (id(world), user) not in _NO_NFT:
        bindir = world.program_dir("no-nft", user=user)
        for d in ("/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
            for name in os.listdir(d) if os.path.isdir(d) else ():
                if name != "nft" and not (bindir / name).exists():
                    (bindir / name).symlink_to(os.path.join(d, name))
        _NO_NFT[(id(world), user)] = str(bindir)
    return _NO_NFT[(id(world), user)]


def tunrelay(world: World, path: str, *args: str, user: bool = True, env: dict | None = None, **kw):
    """netwrap --backend tunrelay on the given TCP path: tproxy where nftables
    is installed (here), nat where netwrap finds no nft (auto's fallback)."""
    env = dict(env or {})
    helpers: list[str] = []
    if path == "nat":
        helpers, lookup = world.helpers_from(path_without_nft(world, user=user), user=user)
        env.update(lookup)
    return world.netwrap("--backend", "tunrelay", *helpers, *args, user=user, env=env, **kw)


def relay_stats(stderr: str, path: str) -> dict[str, int]:
    """The engine's counters, from the -v line tunrelay prints when it stops."""
    line = next(l for l in stderr.splitlines() if f"tunrelay ({path} TCP path)" in l)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_the_path_is_the_one_meant(world: World, path: str) -> None:
    done = tunrelay(world, path, "-v", "--", "true")
    assert done.returncode == 0, done.stderr
    assert f"TCP path {path}" in done.stderr


@pytest.mark.parametrize("scheme, port", [("http", World.HTTP_PORT), ("https", World.HTTPS_PORT)])
def test_curl_v4_and_v6(world: World, path: str, as_user: bool, scheme: str, port: int) -> None:
    mark = world.mark()
    script = "; ".join(f"curl -sS -m 10 --cacert {world.ca_file} {scheme}://{host}:{port}/hello"
                       for host in (World.WORLD_V4, f"[{World.WORLD_V6}]"))
    done = tunrelay(world, path, "--", "sh", "-c", script, user=as_user)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from the world\n" * 2
    seen = [(r["listener"], r["local"], r["peer"]) for r in world.http_log(since=mark)]
    assert seen == [(scheme, World.WORLD_V4, World.HOST_V4), (scheme, World.WORLD_V6, World.HOST_V6)]


@pytest.mark.parametrize("size", [200 * 1024 * 1024])
def test_200_mib_download_is_intact(world: World, path: str, as_user: bool, size: int) -> None:
    done = tunrelay(world, path, "--", "sh", "-c",
                    f"curl -sS -m 60 http://{World.WORLD_V4}/bytes/{size} | sha256sum", user=as_user, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == bytegen.sha256_hex(size)


REFUSED = """
import socket, sys, time
for addr in sys.argv[1:]:
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.settimeout(10)
    t = time.monotonic()
    try:
        s.connect((addr, 1))
        print(addr, "connected")
    except OSError as exc:
        print(addr, exc.strerror, round(time.monotonic() - t, 3))
"""


def test_no_listener_is_connection_refused_at_once(world: World, path: str, as_user: bool) -> None:
    done = tunrelay(world, path, "--", world.python, "-c", REFUSED, World.WORLD_V4, World.WORLD_V6, user=as_user)
    assert done.returncode == 0, done.stderr
    lines = [l.rsplit(" ", 1) for l in done.stdout.splitlines()]
    assert [l[0] for l in lines] == [f"{World.WORLD_V4} Connection refused", f"{World.WORLD_V6} Connection refused"]
    assert all(float(l[1]) < 1.0 for l in lines), done.stdout
    curl = tunrelay(world, path, "--", "curl", "-sS", "-m", "5", f"http://{World.WORLD_V4}:1/", user=as_user)
    assert curl.returncode == 7 and "Couldn't connect to server" in curl.stderr, curl.stderr


def test_ping_and_dig(world: World, path: str, as_user: bool) -> None:
    mark = world.mark()
    script = (f"ping -c 3 -i 0.2 -W 2 {World.WORLD_V4} && ping -6 -c 3 -i 0.2 -W 2 {World.WORLD_V6} && "
              f"dig +time=2 +tries=1 +short www.example.test A && "
              f"dig +time=2 +tries=1 +short +tcp www.example.test AAAA && "
              f"dig +time=2 +tries=1 +short @{World.DNS_V4} example.com A && "
              f"dig +time=2 +tries=1 +short +tcp @{World.DNS_V6} example.com AAAA")
    done = tunrelay(world, path, "--", "sh", "-c", script, user=as_user)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("3 packets transmitted, 3 received") == 2
    answers = [l for l in done.stdout.splitlines() if re.fullmatch(r"[0-9a-f.:]+", l)]
    assert answers == [World.WORLD_V4, World.WORLD_V6, World.WORLD_V4, World.WORLD_V6]
    # the sandbox's DNS address went through the host's loopback resolver, UDP then TCP
    protos = [r["proto"] for r in world.resolver_log(since=mark) if r["qname"] == "www.example.test"]
    assert protos == ["udp", "tcp"]
    direct = {(r["proto"], r["local"]) for r in world.dns_log(since=mark) if r["qname"] == "example.com"}
    assert direct == {("udp", World.DNS_V4), ("tcp", World.DNS_V6)}


TCP_BYTES = 32 << 20
UDP_BYTES = 4 << 20


def test_iperf3_tcp_both_ways_and_udp(world: World, path: str) -> None:
    base = 5201 + os.getpid() % 1000
    # One server per run: an iperf3 server may still be "busy" with the last
    # test when the next client arrives.  -B: UDP answers come from the
    # address the client used (the relay's UDP sockets are connected).
    servers = [world.popen(["iperf3", "-s", "-1", "-B", World.WORLD_V4, "-p", str(base + i)], ns="inet",
                           user=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(3)]
    try:
        time.sleep(0.3)  # iperf3 has no readiness signal; it listens within milliseconds
        # A fixed amount each way, not a fixed time: what arrived is then a
        # fact to check exactly, whatever the machine's speed.
        client = f"iperf3 -J -c {World.WORLD_V4} -n {TCP_BYTES} -p"
        script = (f"{client} {base}; echo ===; {client} {base + 1} -R; echo ===; "
                  f"iperf3 -J -c {World.WORLD_V4} -u -b 50M -n {UDP_BYTES} -p {base + 2}")
        done = tunrelay(world, path, "--", "sh", "-c", script, timeout=60)
    finally:
        for server in servers:
            server.kill()
            server.wait(5)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    up, down, udp = (json.loads(part) for part in done.stdout.split("===\n"))
    for result in (up, down):
        assert "error" not in result, result.get("error")
        # The sender hands over all of -n (its last block may overshoot) and
        # the test ends without an error; iperf3's receiver total may leave
        # out what was still in flight when the sender reported (the download
        # test checks integrity).
        assert result["end"]["sum_sent"]["bytes"] >= TCP_BYTES
        assert 0 < result["end"]["sum_received"]["bytes"] <= result["end"]["sum_sent"]["bytes"]
    assert "error" not in udp, udp.get("error")
    assert udp["end"]["sum"]["bytes"] >= UDP_BYTES
    assert udp["end"]["sum"]["lost_percent"] < 5  # datagrams may be lost, but not wholesale


def _wait_quiet(world: World, timeout: float = 15.0) -> None:
    """Until the world's web server has answered what wrk left queued (its
    log stops growing), so later tests do not wait behind that backlog."""
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        count = len(world.http_log())
        if count == seen:
            return
        seen = count
        time.sleep(0.3)


def test_wrk_500_connections_no_socket_errors(world: World, path: str) -> None:
    mark = world.mark()
    try:
        done = tunrelay(world, path, "--", "wrk", "-c", "500", "-t", "2", "-d", "5s", "--timeout", "10s",
                        f"http://{World.WORLD_V4}/hello", timeout=60)
    finally:
        _wait_quiet(world)
    assert done.returncode == 0, done.stderr
    assert "Socket errors" not in done.stdout and "Non-2xx" not in done.stdout, done.stdout
    requests = int(re.search(r"(\d+) requests in", done.stdout).group(1))
    # Every request wrk counts as answered, the world's server logged (its log
    # may hold a few more: requests wrk abandoned when its time ran out).
    served = [r for r in world.http_log(since=mark) if r["path"] == "/hello"]
    assert 0 < requests <= len(served), done.stdout


@pytest.mark.parametrize("missing", [("pasta", "slirp4netns"), ("pasta", "slirp4netns", "nft")],
                         ids=["no-helpers", "no-helpers-no-nft"])
def test_auto_falls_back_to_tunrelay(world: World, as_user: bool, missing: tuple[str, ...]) -> None:
    helpers, env = world.helpers_from(path_without(world, *missing, user=as_user), user=as_user)
    tag = f"fallback-{'-'.join(missing)}-{as_user}-{time.monotonic_ns()}"
    mark = world.mark()
    # The README's first command, with the world's CA: a name, DNS, HTTPS.
    done = world.netwrap(*helpers, "--summary", "--", "curl", "-sSI", "-m", "10", "--cacert", str(world.ca_file),
                         "-H", f"X-Test: {tag}", "https://example.com/hello", user=as_user, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("HTTP/1.1 200"), done.stdout
    assert "netwrap: backend:  tunrelay" in done.stderr
    # (the log may still be taking records from an earlier load test: find ours)
    world.wait_log(lambda: world.http_log(since=mark),
                   lambda r: [h for h in r["headers"] if h[0].lower() == "x-test" and h[1] == tag], timeout=10)
    listing = world.netwrap("backends", *helpers, user=as_user, env=env)
    searched = "PATH" if as_user else "--helper-path"
    assert f"pasta: unavailable: pasta not found in {searched}" in listing.stdout
    assert f"slirp4netns: unavailable: slirp4netns not found in {searched}" in listing.stdout
    assert re.search(r"^tunrelay: available, version ", listing.stdout, re.M)


def test_flood_of_bad_packets_is_dropped_counted_and_survived(world: World, path: str, as_user: bool) -> None:
    """100,000 random and mutated packets written onto the TUN from inside
    while downloads run: every download intact, every malformed packet
    counted, the relay still serving afterwards."""
    size = 20 * 1024 * 1024
    flood = world.user_dir("flood") / "flood.py"
    flood.write_text(FLOOD.read_text())
    flood.chmod(0o644)
    script = (f"{world.python} {flood} 100000 tun0 7 > flood.json & F=$!; n=0; "
              f"while kill -0 $F 2>/dev/null || [ $n -eq 0 ]; do "
              f"curl -sS -m 30 http://{World.WORLD_V4}/bytes/{size} | sha256sum; n=$((n+1)); done; wait $F; "
              f"cat flood.json; ip -s -j link show tun0; curl -sS -m 5 http://{World.WORLD_V4}/hello")
    done = tunrelay(world, path, "-v", "--as-root", "--", "sh", "-c", script, user=as_user,
                    cwd=flood.parent, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[-1] == "hello from the world"
    digests = [l.split()[0] for l in lines if l.endswith("  -")]
    assert digests and set(digests) == {bytegen.sha256_hex(size)}, digests
    sent = json.loads(next(l for l in lines if l.startswith('{"sent"')))
    assert sent["sent"] == 100000
    link = json.loads(next(l for l in lines if l.startswith("[")))[0]
    lost_in_kernel = link["stats64"]["tx"]["dropped"]
    stats = relay_stats(done.stderr, path)
    gauges = {"tcp_flows", "tcp_pending", "held_bytes", "udp_flows", "echo_flows", "tcp_pumps", "tcp_connecting",
              "pipes", "gate_flows", "gate_pending", "tcp_relayed"}
    dropped = sum(v for k, v in stats.items() if k not in gauges)
    assert stats.get("internal_errors", 0) == 0, stats
    assert dropped + lost_in_kernel >= sent["malformed"], (stats, lost_in_kernel, sent)
    for reason in ("truncated", "fragment", "unsupported_proto", "bad_version", "bad_header", "too_many_ext_headers"):
        assert stats.get(reason, 0) > 1000, (reason, stats)
    assert stats.get("udp_flows", 0) <= 4096 and stats.get("echo_flows", 0) <= 256
