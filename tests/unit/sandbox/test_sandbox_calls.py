"""Setup-time calls, served by a real init-side loop in a forked child.

The child stands in for the sandbox's init: it serves calls over a real
SOCK_SEQPACKET channel until "backend-ready". Running it inside a fresh
network namespace needs root (CI runs as root); the calls themselves are the
same code init runs.
"""

from __future__ import annotations

import os
import socket

import pytest

from netwrap.linux import syscalls
from netwrap.sandbox import calls as sandbox_calls
from netwrap.sandbox.channel import Channel
from netwrap.sandbox.messages import BackendReady, NsReady
from netwrap.errors import NetwrapError
from privileges import NAMESPACE_ROOT, NOT_REAL_ROOT_REASON


@pytest.fixture
def calls():
    if NAMESPACE_ROOT:
        pytest.skip(NOT_REAL_ROOT_REASON)
    ours, theirs = Channel.pair()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            ours.close()
            if os.geteuid() == 0:
                syscalls.unshare(syscalls.CLONE_NEWNET)
                syscalls.set_link_up("lo")
            theirs.send(NsReady(holder_pid=os.getpid(), init_pid=os.getpid()))
            sandbox_calls.serve_until_ready(theirs)
        except BaseException:
            status = 1
        os._exit(status)
    theirs.close()
    ours.expect(NsReady)
    yield sandbox_calls.SandboxCalls(ours)
    ours.send(BackendReady())
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    ours.close()


def test_socket_is_created_bound_and_listening_over_there(calls):
    listener = calls.socket(socket.AF_INET, socket.SOCK_STREAM, bind=("127.0.0.1", 0), listen=8,
                            options=[(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)])
    with listener:
        host, port = listener.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1


def test_run_returns_output_and_failures_raise(calls):
    assert calls.run(["sh", "-c", "echo hi; echo err >&2"]).stdout == "hi\n"
    assert calls.run(["sh", "-c", "exit 3"], check=False).status == 3
    with pytest.raises(NetwrapError, match="in the sandbox, run failed: .*exit status 3"):
        calls.run(["sh", "-c", "exit 3"])


def test_bad_calls_are_errors_not_crashes(calls, tmp_path):
    with pytest.raises(NetwrapError, match="in the sandbox, socket failed"):
        calls.socket(socket.AF_INET, socket.SOCK_STREAM, bind=("192.0.2.250", 1))  # not a local address
    with pytest.raises(NetwrapError, match="in the sandbox, write failed"):
        calls.write(str(tmp_path / "no" / "such" / "file"), "x")
    calls.write(str(tmp_path / "f"), "data")  # the loop is still serving
    assert (tmp_path / "f").read_text() == "data"


@pytest.mark.skipif(os.geteuid() != 0, reason="a TUN device in a fresh netns needs root (CI runs as root)")
def test_tun_device_is_opened_over_there(calls):
    fd, name = calls.tun("nwtest%d", sandbox_calls.IFF_TUN | sandbox_calls.IFF_NO_PI)
    try:
        assert name.startswith("nwtest")
        listing = calls.run(["ip", "-o", "link", "show", name]).stdout
        assert name in listing
        # Not in our own namespace: the device lives in the sandbox's.
        assert not os.path.exists(f"/sys/class/net/{name}")
    finally:
        os.close(fd)
