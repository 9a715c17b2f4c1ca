"""slirp4netns backend: argv, probing, decisions and API replies as pure logic; the
handle's lifecycle and port publishing against the real slirp4netns (as root)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time

import pytest

from netwrap.backends import Probe, Target, slirp4netns
from netwrap.backends.slirp4netns import Slirp4netnsBackend, Slirp4netnsHandle
from netwrap.config import Config, Tools
from netwrap.errors import NetwrapError
from netwrap.linux.interfaces import Interface
from netwrap.linux import commands
from privileges import REAL_ROOT

import freshnet
from processes import tagged_processes

ALL_OPTIONS = frozenset({
    "configure", "exit-fd", "ready-fd", "mtu", "enable-ipv6", "api-socket", "cidr", "disable-host-loopback",
    "netns-type", "userns-path", "enable-sandbox", "enable-seccomp", "outbound-addr", "outbound-addr6",
    "disable-dns", "macaddress", "target-type", "help", "version",
})
OLD_OPTIONS = ALL_OPTIONS - {"enable-sandbox", "enable-seccomp", "enable-ipv6", "outbound-addr", "outbound-addr6"}


def config(**kw) -> Config:
    kw.setdefault("rootful", False)
    return Config(command=("true",), caller_uid=1000, caller_gid=1000, **kw)


def probe(options=ALL_OPTIONS, path="/usr/bin/slirp4netns") -> Probe:
    return Probe(available=True, path=path, version="1.2.0", options=frozenset(options))


ROOTLESS = Target(pid=4242, rootful=False, netns_fd=9)
ROOTFUL = Target(pid=4242, rootful=True, netns_fd=9)


def argv(target=ROOTLESS, cfg=None, pr=None, *, ipv6=True, sandbox=True) -> list[str]:
    return Slirp4netnsBackend().argv(target, cfg or config(rootful=target.rootful), pr or probe(), ready_fd=5,
                                     exit_fd=6, api_socket="/run/x/api.sock", ipv6=ipv6, sandbox=sandbox)


# -- argv ---------------------------------------------------------------------------------------

def test_rootless_attaches_by_pid():
    assert argv() == [
        "/usr/bin/slirp4netns", "--configure", "--mtu=65520", "--ready-fd=5", "--exit-fd=6",
        "--api-socket=/run/x/api.sock", "--disable-host-loopback", "--enable-ipv6", "--enable-sandbox",
        "--enable-seccomp", "4242", "tap0",
    ]


def test_rootful_names_the_netns_fd():
    got = argv(ROOTFUL)
    assert got[-3:] == ["--netns-type=path", "/proc/self/fd/9", "tap0"]
    assert "4242" not in got


def test_host_loopback_only_closed_unless_allowed():
    assert "--disable-host-loopback" in argv(cfg=config())
    assert "--disable-host-loopback" not in argv(cfg=config(allow_host_loopback=True))


def test_options_the_build_lacks_are_left_out():
    old = probe(OLD_OPTIONS)
    got = argv(pr=old, ipv6=slirp4netns.ipv6_possible(old, ROOTLESS), sandbox=slirp4netns.use_sandbox(old, None))
    assert not [a for a in got if a.startswith(("--enable-", "--outbound"))]
    assert got[:6] == ["/usr/bin/slirp4netns", "--configure", "--mtu=65520", "--ready-fd=5", "--exit-fd=6",
                       "--api-socket=/run/x/api.sock"]


UPLINK2 = Interface(name="up2", index=7, ipv4=("198.18.0.2", "198.18.0.3"), ipv6=("2001:db8:fe::2",))
UPLINK2_V4_ONLY = Interface(name="up2", index=7, ipv4=("198.18.0.2",))


def test_iface_binds_its_first_address_of_each_family():
    got = argv(cfg=config(outbound_interface=UPLINK2))
    assert [a for a in got if "outbound" in a] == ["--outbound-addr=198.18.0.2", "--outbound-addr6=2001:db8:fe::2"]
    assert got[-2:] == ["4242", "tap0"]
    got = argv(cfg=config(outbound_interface=UPLINK2), ipv6=False)
    assert [a for a in got if "outbound" in a] == ["--outbound-addr=198.18.0.2"]
    assert not [a for a in argv() if "outbound" in a]


def test_iface_without_ipv6_turns_the_sandboxs_ipv6_off():
    # IPv6 that could not be bound to IFACE would leave by the host's default route.
    assert slirp4netns.outbound_ipv6_possible(probe(), None)
    assert slirp4netns.outbound_ipv6_possible(probe(), UPLINK2)
    assert not slirp4netns.outbound_ipv6_possible(probe(), UPLINK2_V4_ONLY)
    assert not slirp4netns.outbound_ipv6_possible(probe(ALL_OPTIONS - {"outbound-addr6"}), UPLINK2)


def test_iface_capability_follows_the_builds_outbound_addr():
    assert "outbound-interface" in slirp4netns.capabilities_for(probe(), ipv6=True, icmp=True)
    assert "outbound-interface" not in slirp4netns.capabilities_for(probe(OLD_OPTIONS), ipv6=True, icmp=True)


def test_ipv6_needs_the_option_and_a_sandbox_to_configure():
    with_calls = Target(pid=1, rootful=False, netns_fd=3, calls=object(), tools=Tools(ip="/usr/sbin/ip"))
    assert slirp4netns.ipv6_possible(probe(), with_calls)
    assert not slirp4netns.ipv6_possible(probe(), ROOTLESS)  # no calls into the sandbox
    assert not slirp4netns.ipv6_possible(probe(OLD_OPTIONS), with_calls)
    no_ip = Target(pid=1, rootful=False, netns_fd=3, calls=object(), tools=Tools(ip=None))
    assert not slirp4netns.ipv6_possible(probe(), no_ip)  # no `ip` to configure it


# -- probing ------------------------------------------------------------------------------------

def test_probe_names_missing_options(monkeypatch):
    monkeypatch.setattr(slirp4netns, "which", lambda name: "/opt/old/slirp4netns")
    monkeypatch.setattr(slirp4netns, "probe_binary", lambda *a, **k: {
        "version": "0.3.0", "options": sorted(ALL_OPTIONS - {"exit-fd", "netns-type"})})
    got = Slirp4netnsBackend().probe()
    assert not got.available
    assert got.reason == "/opt/old/slirp4netns (version 0.3.0) lacks option(s) --exit-fd, --netns-type"
    assert got.fix == "install a newer 'slirp4netns' package"


def test_probe_without_binary_names_the_package(monkeypatch):
    monkeypatch.setattr(slirp4netns, "which", lambda name: None)
    monkeypatch.setattr(commands, "_started_as_root", False)
    got = Slirp4netnsBackend().probe()
    assert (got.available, got.reason) == (False, "slirp4netns not found in PATH")
    monkeypatch.setattr(commands, "_started_as_root", True)  # root did not search the caller's PATH
    assert Slirp4netnsBackend().probe().reason == "slirp4netns not found in the system PATH"
    assert "apt-get install slirp4netns" in got.fix


def test_probe_of_a_complete_build(monkeypatch):
    monkeypatch.setattr(slirp4netns, "which", lambda name: "/usr/bin/slirp4netns")
    monkeypatch.setattr(slirp4netns, "probe_binary", lambda *a, **k: {"version": "1.2.0",
                                                                       "options": sorted(ALL_OPTIONS)})
    got = Slirp4netnsBackend().probe()
    assert (got.available, got.version, got.options) == (True, "1.2.0", ALL_OPTIONS)


# -- decisions ----------------------------------------------------------------------------------

def test_capabilities_follow_the_build_and_icmp():
    full = slirp4netns.capabilities_for(probe(), ipv6=True, icmp=True)
    # Publishing keeps the client's address (tests/e2e/test_publish.py), on IPv4 host addresses only.
    assert full == {"ipv4", "ipv6", "tcp", "udp", "icmp", "publish", "publish-udp", "publish-keeps-peer",
                    "outbound-interface", "host-loopback"}
    old = slirp4netns.capabilities_for(probe(OLD_OPTIONS), ipv6=False, icmp=False)
    assert old == {"ipv4", "tcp", "udp", "publish", "publish-udp", "publish-keeps-peer", "host-loopback"}


@pytest.mark.parametrize("text, allowed", [
    ("1\t0\n", False), ("0\t2147483647\n", True), ("{gid}\t{gid}\n", True), ("garbage", False)])
def test_ping_sockets_allowed(tmp_path, text, allowed):
    path = tmp_path / "ping_group_range"
    path.write_text(text.format(gid=os.getegid()))
    assert slirp4netns.ping_sockets_allowed(str(path)) is allowed
    assert slirp4netns.ping_sockets_allowed(str(tmp_path / "missing")) is False


def test_sandbox_only_where_slirps_dns_can_still_read_resolv_conf(tmp_path):
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.symlink_to("/run/systemd/resolve/stub-resolv.conf")
    outside.symlink_to(tmp_path / "elsewhere.conf")
    assert slirp4netns.use_sandbox(probe(), config(), str(inside))
    assert not slirp4netns.use_sandbox(probe(), config(), str(outside))
    # Forced resolvers: slirp's DNS address is not used at all.
    assert slirp4netns.use_sandbox(probe(), config(dns=("9.9.9.9",)), str(outside))
    assert not slirp4netns.use_sandbox(probe(OLD_OPTIONS), config(dns=("9.9.9.9",)), str(inside))


@pytest.mark.parametrize("text, has_v6", [
    ("nameserver 127.0.0.53\n", False), ("nameserver ::1\n", False),
    ("# nameserver 2001:db8::1\nnameserver 10.0.0.1\nnameserver 2001:db8::53\n", True)])
def test_fd00_3_only_with_an_ipv6_host_resolver(tmp_path, text, has_v6):
    path = tmp_path / "resolv.conf"
    path.write_text(text)
    assert slirp4netns.host_has_v6_resolver(str(path)) is has_v6


# -- the handle, against the real slirp4netns ------------------------------------------------------
#
# Each test owns two fresh network namespaces: "host", where slirp4netns runs
# and publishes (its loopback is the only host side the test touches), and
# "sandbox", where it creates tap0. slirp4netns is started from the thread
# that stays in "host" for the whole test: PDEATHSIG follows that thread.

needs_real_slirp = pytest.mark.skipif(
    not REAL_ROOT or shutil.which("slirp4netns") is None or shutil.which("ip") is None,
    reason="needs real root (fresh network namespaces; CI runs as root), slirp4netns and ip")

ROOTFUL_CONFIG = Config(command=("true",), caller_uid=0, caller_gid=0, rootful=True)


@pytest.fixture
def namespaces(tmp_path, monkeypatch):
    """(host, sandbox): fds of two fresh network namespaces, lo up in host; slirp's files under tmp_path."""
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    host, sandbox = freshnet.new_netns(), freshnet.new_netns()
    freshnet.sh(host, "ip link set lo up")
    yield host, sandbox
    os.close(host)
    os.close(sandbox)


def _in_host(host: int, body) -> None:
    """body(start) in the host netns, where start(netns_fd) starts slirp4netns (rootful form) for that
    namespace; whatever it started is stopped before the thread ends."""
    handles: list[Slirp4netnsHandle] = []

    def start(netns_fd: int) -> Slirp4netnsHandle:
        target = Target(pid=os.getpid(), rootful=True, netns_fd=netns_fd)
        handles.append(Slirp4netnsBackend().start(target, ROOTFUL_CONFIG))
        return handles[-1]

    def run() -> None:
        try:
            body(start)
        finally:
            for handle in handles:
                handle.stop(timeout=1)

    freshnet.run_in(host, run)


@needs_real_slirp
def test_ready_then_clean_stop_through_the_exit_fd(namespaces):
    host, sandbox = namespaces

    def body(start):
        handle = start(sandbox)
        workdir = os.path.dirname(handle.api_socket)
        assert os.stat(workdir).st_mode & 0o777 == 0o700
        info = handle.wait_ready(5)
        assert (info.interface, info.addresses, info.gateways, info.dns) == (
            "tap0", ("10.0.2.100/24",), ("10.0.2.2",), ("10.0.2.3",))
        # "Ready" means tap0 is there and configured, as the sandbox's kernel sees it.
        assert "inet 10.0.2.100/24 " in freshnet.sh(sandbox, "ip -o -4 addr show dev tap0")
        assert "default via 10.0.2.2 dev tap0" in freshnet.sh(sandbox, "ip -4 route show default")
        assert handle.poll() is None
        started = time.monotonic()
        handle.stop(timeout=5)
        assert time.monotonic() - started < 2  # it left on its own: no deadline, no force
        assert handle.poll() == 0
        assert not os.path.exists(workdir)

    _in_host(host, body)


@needs_real_slirp
def test_failure_before_ready_carries_its_output(namespaces):
    host, _ = namespaces
    not_a_netns = os.open("/etc/hostname", os.O_RDONLY | os.O_CLOEXEC)

    def body(start):
        handle = start(not_a_netns)
        with pytest.raises(NetwrapError) as caught:
            handle.wait_ready(5)
        # slirp4netns's own words, as 1.2.0 prints them.
        assert str(caught.value) == ("slirp4netns exited (exit status 1) before it was ready: "
                                     "setns(CLONE_NEWNET): Invalid argument; child failed(1)")
        assert not os.path.exists(os.path.dirname(handle.api_socket))

    try:
        _in_host(host, body)
    finally:
        os.close(not_a_netns)


@needs_real_slirp
def test_not_ready_in_time_is_stopped(namespaces, tmp_path, monkeypatch):
    host, _ = namespaces
    tag = f"slirp-not-ready-{os.getpid()}"
    monkeypatch.setenv("NETWRAP_TEST_TAG", tag)  # slirp4netns and its child inherit it
    # The "namespace" is a FIFO without a writer: slirp4netns's open() of
    # /proc/self/fd/N blocks there for good, so it never gets to "ready".
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    blocking = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def body(start):
        handle = start(blocking)
        with pytest.raises(NetwrapError, match=r"^slirp4netns did not become ready within 0.3 s$"):
            handle.wait_ready(0.3)
        status = handle.poll()
        assert status is not None
        assert not os.path.exists(os.path.dirname(handle.api_socket))
        # Its child, stuck in that open(), went with it.
        deadline = time.monotonic() + 2
        while (left := tagged_processes(tag)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left == []

    try:
        _in_host(host, body)
    finally:
        os.close(blocking)
        for left in tagged_processes(tag):  # only if the test failed
            left.kill()


@needs_real_slirp
def test_stop_forces_after_the_deadline(namespaces):
    host, sandbox = namespaces

    def body(start):
        handle = start(sandbox)
        handle.wait_ready(5)
        # A stopped process neither sees its exit fd close nor acts on
        # SIGTERM: the deadline must pass and SIGKILL end it.
        os.kill(handle.pid, signal.SIGSTOP)
        started = time.monotonic()
        handle.stop(timeout=0.2)
        assert time.monotonic() - started >= 0.2
        status = handle.poll()
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    _in_host(host, body)


@needs_real_slirp
def test_diagnostics_leave_out_chatter(namespaces):
    host, sandbox = namespaces

    def body(start):
        handle = start(sandbox)
        handle.wait_ready(5)
        handle.unpublish(handle.publish("tcp", _free_port(), 80, "127.0.0.1"))  # the API's chatter too
        handle.stop()
        assert "api_handler: got request" in b"".join(handle.process._output).decode()  # it did talk
        assert handle.diagnostics() == ""

    _in_host(host, body)


# -- publishing through the real API socket -------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_once(sandbox: int, port: int) -> tuple[threading.Thread, list[tuple]]:
    """A TCP server in the sandbox on port: answers b"<peer address> " + what it read; its record."""
    def listen() -> socket.socket:
        s = socket.socket()
        s.bind(("0.0.0.0", port))
        s.listen()
        return s

    listener = freshnet.run_in(sandbox, listen)
    listener.settimeout(10)
    seen: list[tuple] = []

    def serve() -> None:
        with listener:
            conn, peer = listener.accept()
            with conn:
                data = b""
                while chunk := conn.recv(4096):  # the client's SHUT_WR ends the request
                    data += chunk
                seen.append((peer[0], conn.getsockname(), data))
                conn.sendall(peer[0].encode() + b" " + data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, seen


def _ask(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        return reply


@needs_real_slirp
def test_publish_forwards_a_host_port_into_the_sandbox(namespaces):
    host, sandbox = namespaces

    def body(start):
        handle = start(sandbox)
        handle.wait_ready(5)
        server, seen = _serve_once(sandbox, 8080)
        port = _free_port()
        rule = handle.publish("tcp", port, 8080, "127.0.0.1")
        assert handle.published() == [{"id": rule, "proto": "tcp", "host_addr": "127.0.0.1", "host_port": port,
                                        "guest_addr": "10.0.2.100", "guest_port": 8080}]
        # libslirp connects from its gateway address to the sandbox's own.
        assert _ask(port, b"hello through slirp") == b"10.0.2.2 hello through slirp"
        server.join(5)
        assert seen == [("10.0.2.2", ("10.0.2.100", 8080), b"hello through slirp")]

    _in_host(host, body)


@needs_real_slirp
def test_unpublish_removes_the_forward(namespaces):
    host, sandbox = namespaces

    def body(start):
        handle = start(sandbox)
        handle.wait_ready(5)
        port = _free_port()
        first = handle.publish("tcp", port, 8080, "127.0.0.1")
        second = handle.publish("udp", port, 53, "127.0.0.1")
        assert first != second
        handle.unpublish(first)
        assert [(e["id"], e["proto"], e["host_port"], e["guest_port"]) for e in handle.published()] == [
            (second, "udp", port, 53)]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

    _in_host(host, body)


@needs_real_slirp
def test_publish_error_is_named(namespaces):
    host, sandbox = namespaces

    def body(start):
        handle = start(sandbox)
        handle.wait_ready(5)
        with pytest.raises(NetwrapError) as caught:
            handle.publish("sctp", 1, 2)
        assert str(caught.value) == "slirp4netns API (add_hostfwd): bad request: add_hostfwd: bad arguments.proto"
        with pytest.raises(NetwrapError) as caught:
            handle.unpublish(4242)
        assert str(caught.value) == ("slirp4netns API (remove_hostfwd): "
                                     "bad request: remove_hostfwd: bad arguments.id")

    _in_host(host, body)


@pytest.mark.parametrize("data, result", [
    (b'{"return": {"id": 7}}', {"id": 7}),
    (b'{"return":{}}', {}),
    (b'{"entries":[{"id":1,"proto":"tcp"}]}', {"entries": [{"id": 1, "proto": "tcp"}]}),  # 1.2.0's list_hostfwd
])
def test_api_reply_from_bytes(data, result):
    assert slirp4netns.api_reply("x", data) == result


@pytest.mark.parametrize("data, message", [
    (b'{"error":{"desc":"bad request: add_hostfwd: bad arguments.proto"}}',
     "slirp4netns API (add_hostfwd): bad request: add_hostfwd: bad arguments.proto"),
    (b'{"error":"nope"}', "slirp4netns API (add_hostfwd): nope"),
    (b'', "slirp4netns API (add_hostfwd): bad reply b''"),
    (b'[1]', "slirp4netns API (add_hostfwd): bad reply b'[1]'"),
    (b'{"return": {"id": 7', """slirp4netns API (add_hostfwd): bad reply b'{"return": {"id": 7'"""),
])
def test_api_error_replies_are_named(data, message):
    with pytest.raises(NetwrapError) as caught:
        slirp4netns.api_reply("add_hostfwd", data)
    assert str(caught.value) == message
