"""The publish relay's pieces against the real kernel: the socket maker works
inside another network namespace, and the ruleset loads.  Root only (a
network namespace of its own per test); skipped elsewhere."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from netwrap.backends import publish_relay
from netwrap.backends.publish_relay import IP_TRANSPARENT, IPV6_TRANSPARENT, MARK, SocketMaker, render_ruleset

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare")

# In a fresh netns: lo up, a listener on 127.0.0.1, its port on stdout; then wait for stdin to close.
_INSIDE = (
    "import socket, subprocess, sys\n"
    "subprocess.run(['ip', 'link', 'set', 'lo', 'up'], check=True)\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
    "print(s.getsockname()[1], flush=True)\n"
    "c, _ = s.accept(); c.sendall(b'from the other netns'); c.close()\n"
    "sys.stdin.read()\n"
)


@needs_root
def test_the_maker_makes_transparent_marked_sockets_in_the_namespace_it_joined():
    inside = subprocess.Popen(["unshare", "-n", sys.executable, "-c", _INSIDE], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(inside.stdout.readline())
        netns_fd = os.open(f"/proc/{inside.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            maker = SocketMaker(netns_fd=netns_fd, userns_fd=None)
        finally:
            os.close(netns_fd)
        try:
            with maker.make(socket.AF_INET, socket.SOCK_STREAM) as s:
                assert s.getsockopt(socket.SOL_IP, IP_TRANSPARENT) == 1
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == MARK
                s.settimeout(5)
                # 127.0.0.1:port listens only in that namespace.
                s.connect(("127.0.0.1", port))
                assert s.recv(100) == b"from the other netns"
            with maker.make(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
                assert s6.getsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT) == 1
            with pytest.raises(OSError):
                maker.make(12345, socket.SOCK_STREAM)  # no such family: the error comes back, the maker goes on
            with maker.make(socket.AF_INET, socket.SOCK_DGRAM):
                pass
        finally:
            maker.close()
        assert maker.pid is None
    finally:
        inside.stdin.close()
        inside.wait(10)


@needs_root
@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")
def test_the_ruleset_loads():
    done = subprocess.run(["unshare", "-n", "nft", "-c", "-f", "-"], input=render_ruleset(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_a_wildcard_publish_listens_on_both_families_and_a_busy_port_is_named():
    from netwrap.config import PublishedPort
    from netwrap.errors import NetwrapError

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    opened = publish_relay.open_host_sockets(PublishedPort(proto="udp", host_port=port, sandbox_port=53))
    try:
        assert sorted((s.family, s.getsockname()[0]) for s in opened) == sorted(
            [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")])
        with pytest.raises(NetwrapError, match=f"--publish 127.0.0.1:{port}:53/udp: host port {port}/udp: "):
            publish_relay.open_host_sockets(PublishedPort(proto="udp", host_ip="127.0.0.1", host_port=port,
                                                          sandbox_port=53))
    finally:
        for s in opened:
            s.close()
