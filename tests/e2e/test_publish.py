"""--publish: a client in the world's internet connects to the world host's
address and a published port; the server inside netwrap answers with the
peer it saw, and the client reports that answer.

Where the backend keeps the client's address (declared as
publish-keeps-peer: pasta, and slirp4netns for remote IPv4 clients, both
measured here), the server sees the internet namespace's own address; for a
backend that does not, the test only asks for an answer.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from netwrap.backends import CAP_PUBLISH_IPV6, CAP_PUBLISH_KEEPS_PEER, CAP_PUBLISH_UDP, get
from world.addresses import HOST_V4, HOST_V6, INET_V4, INET_V6
from world.harness import World

# The command: serve `count` clients on PORT (TCP or UDP, both families),
# answering each with "PEER-ADDRESS|WHAT-IT-SENT", then exit.
SERVER = r"""
import socket, sys
proto, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET6, kind)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", port))
if kind == socket.SOCK_STREAM:
    s.listen(8)
def clean(a):
    return a[7:] if a.startswith("::ffff:") else a
served = 0
while served < count:
    if kind == socket.SOCK_STREAM:
        c, peer = s.accept()
        data = c.recv(100)
        if data:
            c.sendall(clean(peer[0]).encode() + b"|" + data)
            served += 1
        c.close()
    else:
        data, peer = s.recvfrom(100)
        s.sendto(clean(peer[0]).encode() + b"|" + data, peer)
        served += 1
"""

# The client, in the internet namespace: retry until the server answers
# (pasta accepts on the host before the command listens), print the answer.
CLIENT = r"""
import socket, sys, time
proto, host, port, what = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
family = socket.AF_INET6 if ":" in host else socket.AF_INET
deadline = time.monotonic() + 20
while True:
    try:
        if proto == "tcp":
            with socket.create_connection((host, port), timeout=2) as c:
                c.sendall(what)
                answer = c.recv(200)
        else:
            with socket.socket(family, socket.SOCK_DGRAM) as c:
                c.settimeout(1)
                c.sendto(what, (host, port))
                answer = c.recv(200)
        if answer:
            print(answer.decode())
            break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("no answer from " + host)
    time.sleep(0.2)
"""

def _port() -> int:
    return 21000 + (os.getpid() * 31 + int(time.time() * 1000)) % 20000


def _serve_and_connect(world: World, backend, *, as_user: bool, proto: str, clients: list[str],
                       extra: tuple[str, ...] = (), publish_host: str = "") -> tuple[list[str], object]:
    """Publish a port; from the internet namespace, connect to the world host once per family
    (clients: the internet namespace's own address of each family); the answers, in order."""
    inner, outer = 7000 + _port() % 1000, _port()
    argv = world.netwrap_cmd(*backend.argv, "--publish", f"{publish_host}{outer}:{inner}/{proto}", *extra,
                             "--", world.python, "-c", SERVER, proto, str(inner), str(len(clients)))
    netwrap = world.popen(argv, user=as_user, stdout=-1, stderr=-1, text=True)
    answers = []
    try:
        for client in clients:
            host = HOST_V6 if ":" in client else HOST_V4
            done = world.run([world.python, "-c", CLIENT, proto, host, str(outer), f"from-{client}"], ns="inet",
                             user=False, timeout=40)
            assert done.returncode == 0, (done.stderr, _early(netwrap))
            answers.append(done.stdout.strip())
        out, err = netwrap.communicate(timeout=20)
    finally:
        if netwrap.poll() is None:
            netwrap.kill()
            netwrap.communicate()
    assert netwrap.returncode == 0, err
    return answers, err


def _clients(backend) -> list[str]:
    """The internet namespace's addresses a published port is reached from (slirp4netns: IPv4 only)."""
    return [INET_V4, INET_V6] if CAP_PUBLISH_IPV6 in get(backend.name).capabilities else [INET_V4]


def _early(process) -> str:
    if process.poll() is None:
        return "netwrap still running"
    return process.stderr.read()


def test_tcp_reaches_the_sandbox_from_the_clients_address(world: World, backend, as_user: bool) -> None:
    clients = _clients(backend)
    answers, _ = _serve_and_connect(world, backend, as_user=as_user, proto="tcp", clients=clients)
    peers = [a.split("|")[0] for a in answers]
    assert [a.split("|")[1] for a in answers] == [f"from-{c}" for c in clients]
    if CAP_PUBLISH_KEEPS_PEER in get(backend.name).capabilities:
        assert peers == clients
    else:
        assert all(peers), answers  # some address; which one is the backend's business


def test_udp_echo_through_a_published_port(world: World, backend, as_user: bool) -> None:
    if CAP_PUBLISH_UDP not in get(backend.name).capabilities:
        pytest.skip(f"{backend} here cannot publish UDP")
    clients = _clients(backend)
    answers, _ = _serve_and_connect(world, backend, as_user=as_user, proto="udp", clients=clients)
    assert [a.split("|")[1] for a in answers] == [f"from-{c}" for c in clients]
    if CAP_PUBLISH_KEEPS_PEER in get(backend.name).capabilities:
        assert [a.split("|")[0] for a in answers] == clients


def test_published_flows_pass_offline_and_allow_lists_and_are_logged_inbound(world: World, backend) -> None:
    folder = world.user_dir("publish")
    log = folder / "flows.jsonl"
    for policy in (("--offline",), ("--block-private", "--allow", "198.51.100.1:80")):
        answers, err = _serve_and_connect(world, backend, as_user=True, proto="tcp", clients=[INET_V4],
                                          extra=(*policy, "--flow-log", str(log), "--summary"))
        assert [a.split("|")[1] for a in answers] == [f"from-{INET_V4}"], policy
        records = [json.loads(line) for line in log.read_text().splitlines()]
        # The client retries until the server listens: a first try may be a refused connection.
        assert records and all(r.get("direction") == "inbound" for r in records), (policy, records)
        for r in records:
            assert (r["protocol"], r["verdict"], r["decided_by"]) == ("tcp", "allow", "--publish"), r
            assert r["destination"]["port"] != r["source"]["port"], r
            if CAP_PUBLISH_KEEPS_PEER in get(backend.name).capabilities:
                assert r["source"]["address"] == INET_V4, r
        # A refused try is one packet each way (SYN, RST); the answered one has the handshake and data.
        answered = [r for r in records if r["packets_sent"] > 2 and r["packets_received"] > 2]
        assert len(answered) == 1, records
        n = len(records)
        assert f"netwrap: flows:    {n} allowed, 0 blocked ({n} of the allowed inbound through --publish)" in err, err


def test_the_command_own_flows_stay_refused_offline(world: World) -> None:
    # A published port opens the way in, not out: the command's own
    # connection to that same port number elsewhere is still refused.
    port = _port()
    done = world.netwrap("--backend", "pasta", "--offline", "--publish", f"{port}:{World.HTTP_PORT}", "--",
                         "curl", "-sS", "-m", "5", f"http://{World.WORLD_V4}:{World.HTTP_PORT}/")
    assert done.returncode == 7, done.stderr  # curl: could not connect


def test_slirp4netns_refuses_an_ipv6_host_address(world: World) -> None:
    port = _port()
    done = world.netwrap("--backend", "slirp4netns", "--publish", f"[{HOST_V6}]:{port}:80", "--", "true")
    assert done.returncode == 125
    assert done.stderr == (f"netwrap: --publish [{HOST_V6}]:{port}:80/tcp needs publish-ipv6, which backend "
                           "slirp4netns lacks here (see 'netwrap backends'; try --backend pasta or tunrelay)\n")


def test_a_busy_host_port_is_refused_before_anything_starts(world: World, as_user: bool) -> None:
    port = _port()
    with world.spawn_server(ns="host", http=[("::", port)]):
        done = world.netwrap("--publish", f"{port}:80", "--", "true", user=as_user)
    assert done.returncode == 2
    assert done.stderr == f"netwrap: error: --publish {port}:80/tcp: host port {port}/tcp is in use\n"


def test_a_privileged_port_is_refused_rootless(world: World) -> None:
    done = world.netwrap("--publish", "80:80", "--", "true")
    assert done.returncode == 2
    assert done.stderr == ("netwrap: error: --publish 80:80/tcp: host port 80 is privileged (below "
                           "net.ipv4.ip_unprivileged_port_start = 1024) and netwrap runs rootless\n")


@pytest.mark.parametrize("spec", ["0:80", "8080:70000", "8080", "[192.0.2.2]:8080:80"])
def test_a_malformed_spec_is_refused_quoting_it(world: World, spec: str) -> None:
    done = world.netwrap("--publish", spec, "--", "true")
    assert done.returncode == 2
    assert done.stderr.startswith(f"netwrap: error: --publish {spec!r}: ") and done.stderr.count("\n") == 1
