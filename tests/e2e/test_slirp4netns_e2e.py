"""slirp4netns, end to end: what is specific to it (the shared behaviour is in test_foundation).

Every test runs real netwrap and slirp4netns in the test world, rootless and
rootful, and checks what the far end (or the host's loopback service) saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from host_probe import PROBE, free_port
from processes import tagged_processes
from world.harness import World

pytestmark = pytest.mark.skipif(not any(os.access(os.path.join(d, "slirp4netns"), os.X_OK)
                                        for d in os.get_exec_path()), reason="slirp4netns is not installed")

GET = ("import sys, urllib.request\n"
       "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(), end='')")

# Prints the sandbox's view, then GETs argv[1]: {"links": ip -j addr, "body": ...}.
VIEW_AND_GET = """
import json, subprocess, sys, urllib.request
links = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout)
body = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
print(json.dumps({"links": links, "body": body}))
"""


def slirp(world: World, *args: str, user: bool = True, **kw) -> subprocess.CompletedProcess:
    return world.netwrap("--backend", "slirp4netns", *args, user=user, **kw)


def slirp_processes(tag: str) -> list[psutil.Process]:
    return [p for p in tagged_processes(tag) if p.name() == "slirp4netns"]


# -- the data path ----------------------------------------------------------------------------

@pytest.mark.parametrize("host", [World.WORLD_V4, f"[{World.WORLD_V6}]"], ids=["ipv4", "ipv6"])
def test_get_through_tap0(world: World, as_user: bool, host: str) -> None:
    mark = world.mark()
    done = slirp(world, "--", world.python, "-c", VIEW_AND_GET, f"http://{host}/hello", user=as_user)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    seen = json.loads(done.stdout)
    assert seen["body"] == "hello from the world\n"
    [record] = world.http_log(since=mark)
    assert record["request"] == "GET /hello HTTP/1.1"
    assert record["peer"] == (World.HOST_V6 if ":" in host else World.HOST_V4)
    [tap] = [link for link in seen["links"] if link["ifname"] == "tap0"]
    assert tap["mtu"] == 65520
    addresses = {f"{a['local']}/{a['prefixlen']}" for a in tap["addr_info"] if a.get("scope") == "global"}
    # Exactly the configured ones: no SLAAC address beside fd00::100.
    assert addresses == {"10.0.2.100/24", "fd00::100/64"}


def test_dns_goes_to_slirps_address(world: World, as_user: bool) -> None:
    mark = world.mark()
    done = slirp(world, "--", "sh", "-c", "grep ^nameserver /etc/resolv.conf; getent ahostsv4 www.example.test",
                 user=as_user)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # The world's host resolver is IPv4 only, so fd00::3 (which libslirp would
    # send to the host's ::1) is not listed.
    assert [l for l in lines if l.startswith("nameserver")] == ["nameserver 10.0.2.3"]
    assert any(l.startswith("93.184.215.14") for l in lines), done.stdout
    assert any(r["qname"] == "www.example.test" for r in world.resolver_log(since=mark))


# -- host loopback -----------------------------------------------------------------------------

def _probe(world: World, as_user: bool, targets: list[str], *flags: str) -> dict:
    done = slirp(world, *flags, "--", world.python, "-c", PROBE, *targets, user=as_user)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_host_loopback_closed_by_default_open_on_request(world: World, as_user: bool) -> None:
    port = free_port()
    targets = [f"{a} {port}" for a in ("10.0.2.2", "127.0.0.1", "fd00::2", "::1")]
    with world.spawn_server(ns="host", http=[("127.0.0.1", port), ("::1", port)]) as server:
        closed = _probe(world, as_user, targets)
        assert "ok" not in closed.values(), closed
        assert server.log("http") == []
        opened = _probe(world, as_user, targets, "--allow-host-loopback")
        assert opened[f"10.0.2.2 {port}"] == "ok", opened
        assert opened[f"127.0.0.1 {port}"] != "ok"  # the sandbox's own loopback
        assert len(server.log("http")) == list(opened.values()).count("ok")


def test_dns_address_reaches_only_port_53_of_the_hosts_resolver(world: World, as_user: bool) -> None:
    # libslirp maps 10.0.2.3 to the host's resolver, here on the host's
    # loopback (127.0.0.53); another service on that address stays out of reach.
    port = free_port()
    with world.spawn_server(ns="host", http=[(World.HOST_RESOLVER, port)]) as server:
        for flags in ((), ("--allow-host-loopback",)):
            results = _probe(world, as_user, [f"10.0.2.3 {port}"], *flags)
            assert results[f"10.0.2.3 {port}"] != "ok", (flags, results)
        assert server.log("http") == []


# -- its own sandbox ---------------------------------------------------------------------------

def _running_slirp(world: World, as_user: bool, tag: str, *flags: str):
    proc = world.popen(world.netwrap_cmd("--backend", "slirp4netns", *flags, "--", "sh", "-c",
                                         "echo started; read line"),
                       user=as_user, env={"NETWRAP_TEST_TAG": tag}, stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "started\n", proc.stderr.read() if proc.poll() is not None else ""
    [helper] = slirp_processes(tag)
    return proc, helper


def _finish(proc: subprocess.Popen) -> None:
    try:
        proc.communicate("\n", timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sandbox_and_seccomp_when_dns_allows(world: World, as_user: bool, tag: str) -> None:
    # The world's /etc/resolv.conf points outside /etc and /run, which the
    # sandbox would hide from slirp's DNS: off by default here, on with --dns.
    proc, helper = _running_slirp(world, as_user, tag)
    try:
        assert "--enable-sandbox" not in helper.cmdline()
        assert "--enable-seccomp" in helper.cmdline()
        assert _seccomp_mode(helper.pid) == 2
    finally:
        _finish(proc)
    proc, helper = _running_slirp(world, as_user, tag, "--dns", World.DNS_V4)
    try:
        assert "--enable-sandbox" in helper.cmdline()
        assert _seccomp_mode(helper.pid) == 2
        # Its root is an empty read-only tmpfs holding only /etc and /run.
        assert sorted(os.listdir(f"/proc/{helper.pid}/root")) == ["etc", "run"]
    finally:
        _finish(proc)
    mark = world.mark()
    done = slirp(world, "--dns", World.DNS_V4, "--", world.python, "-c", GET,
                 "http://www.example.test/hello", user=as_user)
    assert (done.returncode, done.stdout) == (0, "hello from the world\n"), done.stderr
    assert [r["request"] for r in world.http_log(since=mark)] == ["GET /hello HTTP/1.1"]


def _seccomp_mode(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(l for l in f if l.startswith("Seccomp:")).split()[1])


# -- lifetime ----------------------------------------------------------------------------------

def test_kill_9_of_netwrap_ends_slirp4netns_within_2s(world: World, as_user: bool, tag: str) -> None:
    proc, helper = _running_slirp(world, as_user, tag)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        deadline = time.monotonic() + 2.0
        while _alive(helper) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(helper)
        assert slirp_processes(tag) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_clean_exit_leaves_no_api_socket_dir(world: World, as_user: bool, tag: str) -> None:
    proc, helper = _running_slirp(world, as_user, tag)
    try:
        api = next(a for a in helper.cmdline() if a.startswith("--api-socket="))
        api_dir = os.path.dirname(api.split("=", 1)[1])
        st = os.stat(api_dir)
        assert st.st_mode & 0o777 == 0o700
        assert st.st_uid == (world.user.uid if as_user else 0)
    finally:
        _finish(proc)
    assert proc.returncode == 0
    assert not os.path.exists(api_dir)
    assert slirp_processes(tag) == []


# -- failures ----------------------------------------------------------------------------------

def test_failure_shows_slirp4netns_output_in_one_line(world: World, as_user: bool) -> None:
    # A slirp4netns that is handed an impossible MTU on top of netwrap's options.
    bindir = world.program_dir("badslirp", user=as_user)
    wrapper = bindir / "slirp4netns"
    wrapper.write_text('#!/bin/sh\nexec /usr/bin/slirp4netns "$@" --mtu=99999\n')
    wrapper.chmod(0o755)
    helpers, env = world.helpers_from(f"{bindir}:/usr/sbin:/usr/bin:/sbin:/bin", user=as_user)
    done = slirp(world, *helpers, "--", "true", user=as_user, env=env)
    assert done.returncode == 125
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("netwrap: slirp4netns exited (exit status 1) before it was ready: ")
    assert "MTU must be a positive integer" in done.stderr
    assert "Usage:" not in done.stderr


def test_missing_binary_names_the_package(world: World, as_user: bool) -> None:
    bindir = world.program_dir("noslirp", user=as_user)
    for name in ("sh", "true", "ip", "nft"):
        for d in ("/usr/sbin", "/usr/bin"):
            if os.path.exists(f"{d}/{name}") and not (bindir / name).exists():
                (bindir / name).symlink_to(f"{d}/{name}")
    helpers, env = world.helpers_from(str(bindir), user=as_user)
    done = slirp(world, *helpers, "--", "true", user=as_user, env=env)
    assert done.returncode == 125
    assert done.stderr.splitlines() == [
        f"netwrap: backend slirp4netns is not available: slirp4netns not found in {'PATH' if as_user else '--helper-path'}; "
        "install the 'slirp4netns' package (e.g. apt-get install slirp4netns)"]


# -- ICMP --------------------------------------------------------------------------------------

@contextlib.contextmanager
def host_ping_group_range(world: World, value: str):
    """Set net.ipv4.ping_group_range of the world's host namespace for a while."""
    path = "/proc/sys/net/ipv4/ping_group_range"
    before = " ".join(world.run(["cat", path], user=False).stdout.split())
    world.run(["sh", "-c", f"echo '{value}' > {path}"], user=False)
    try:
        yield
    finally:
        world.run(["sh", "-c", f"echo '{before}' > {path}"], user=False)


def _declared(world: World, as_user: bool) -> set[str]:
    lines = world.netwrap("backends", user=as_user).stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("slirp4netns:"))
    return set(lines[at + 1].split(":", 1)[1].replace(",", " ").split())


def _ping(world: World, as_user: bool) -> subprocess.CompletedProcess:
    # Only root of the sandbox, with its capabilities, may open its ping sockets.
    return slirp(world, "--as-root", "--", "sh", "-c",
                 "sysctl -qw net.ipv4.ping_group_range='0 0' && ping -c1 -W2 93.184.215.14", user=as_user)


def test_icmp_without_host_ping_sockets_only_as_root(world: World, as_user: bool) -> None:
    # A root slirp4netns outside its sandbox (off here) falls back to a raw socket.
    with host_ping_group_range(world, "1 0"):  # the kernel's default: nobody
        assert ("icmp" in _declared(world, as_user)) is (not as_user)
        done = _ping(world, as_user)
    assert done.returncode == (1 if as_user else 0), done.stdout + done.stderr


def test_icmp_echo_with_host_ping_sockets(world: World, as_user: bool) -> None:
    with host_ping_group_range(world, "0 2147483647"):
        assert "icmp" in _declared(world, as_user)
        done = _ping(world, as_user)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 received" in done.stdout
