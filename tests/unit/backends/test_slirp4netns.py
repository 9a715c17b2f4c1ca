"""slirp4netns backend without privileges: argv, probing, decisions, and the handle's
lifecycle against a fake slirp4netns that speaks the ready-fd/exit-fd protocol."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time

import pytest

from netwrap.backends import Probe, Target, slirp4netns
from netwrap.backends.slirp4netns import Slirp4netnsBackend, Slirp4netnsHandle
from netwrap.config import Config, Tools
from netwrap.errors import NetwrapError

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


@pytest.mark.parametrize("outbound, expected", [
    ("eth1", ["--outbound-addr=eth1", "--outbound-addr6=eth1"]),
    ("192.0.2.7", ["--outbound-addr=192.0.2.7"]),
    ("2001:db8::7", ["--outbound-addr6=2001:db8::7"]),
])
def test_outbound_interface_or_address(outbound, expected):
    class WithOutbound:  # Config has no such field yet
        allow_host_loopback = False

    WithOutbound.outbound = outbound
    assert [a for a in argv(cfg=WithOutbound()) if "outbound" in a] == expected
    assert [a for a in argv(cfg=WithOutbound(), ipv6=False) if "outbound" in a] == [
        a for a in expected if "addr6" not in a]
    assert not [a for a in argv(cfg=WithOutbound(), pr=probe(OLD_OPTIONS)) if "outbound" in a]


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
    got = Slirp4netnsBackend().probe()
    assert (got.available, got.reason) == (False, "slirp4netns not found in PATH")
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
    assert full == {"ipv4", "ipv6", "tcp", "udp", "icmp", "publish", "outbound-interface", "host-loopback"}
    old = slirp4netns.capabilities_for(probe(OLD_OPTIONS), ipv6=False, icmp=False)
    assert old == {"ipv4", "tcp", "udp", "publish", "host-loopback"}


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


# -- the handle, against a fake slirp4netns -------------------------------------------------------

FAKE = r'''#!{python}
import os, select, signal, sys, time
opts = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
mode = {mode!r}
print("Starting slirp\n* MTU:             65520", flush=True)
if mode == "fail":
    sys.stderr.write('open("/dev/net/tun"): Permission denied\nchild failed(1)\n')
    print("Usage: slirp4netns [OPTION]... PID|PATH [TAPNAME]\n-c, --configure  bring up the interface")
    sys.exit(1)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode != "never-ready":
    os.write(int(opts["ready-fd"]), b"1")
    os.close(int(opts["ready-fd"]))
if mode == "stubborn":
    while True:
        time.sleep(60)
select.select([int(opts["exit-fd"])], [], [])
print("exitfd event", flush=True)
sys.exit(0)
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    handles: list[Slirp4netnsHandle] = []

    def start(mode: str, cfg: Config | None = None) -> Slirp4netnsHandle:
        path = tmp_path / f"slirp4netns-{mode}"
        path.write_text(FAKE.format(python=sys.executable, mode=mode))
        path.chmod(0o755)
        handle = Slirp4netnsBackend().start(ROOTLESS, cfg or config(), probe(path=str(path)))
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop(timeout=0.5)


def test_ready_then_clean_stop_through_the_exit_fd(fake):
    handle = fake("normal")
    workdir = os.path.dirname(handle.api_socket)
    assert os.stat(workdir).st_mode & 0o777 == 0o700
    info = handle.wait_ready(5)
    assert (info.interface, info.addresses, info.gateways, info.dns) == (
        "tap0", ("10.0.2.100/24",), ("10.0.2.2",), ("10.0.2.3",))
    assert handle.poll() is None
    started = time.monotonic()
    handle.stop(timeout=5)
    assert time.monotonic() - started < 2  # it left on its own: no deadline, no force
    assert handle.poll() == 0
    assert not os.path.exists(workdir)


def test_failure_before_ready_carries_its_output(fake):
    handle = fake("fail")
    with pytest.raises(NetwrapError) as caught:
        handle.wait_ready(5)
    message = str(caught.value)
    assert message == ('slirp4netns exited (exit status 1) before it was ready: '
                       'open("/dev/net/tun"): Permission denied; child failed(1)')
    assert not os.path.exists(os.path.dirname(handle.api_socket))


def test_not_ready_in_time_is_stopped(fake):
    handle = fake("never-ready")
    with pytest.raises(NetwrapError, match=r"did not become ready within 0.3 s"):
        handle.wait_ready(0.3)
    assert handle.poll() is not None


def test_stop_forces_after_the_deadline(fake):
    handle = fake("stubborn")
    handle.wait_ready(5)
    handle.stop(timeout=0.2)
    status = handle.poll()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_diagnostics_leave_out_chatter(fake):
    handle = fake("normal")
    handle.wait_ready(5)
    handle.stop()
    assert handle.diagnostics() == ""


# -- publishing through the API socket ------------------------------------------------------------

def _api_server(path: str, reply: dict) -> list[dict]:
    seen: list[dict] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()

    def serve():
        conn, _ = server.accept()
        with conn, server:
            data = b""
            while chunk := conn.recv(4096):  # the client's SHUT_WR ends the request
                data += chunk
            seen.append(json.loads(data))
            conn.sendall(json.dumps(reply).encode())

    threading.Thread(target=serve, daemon=True).start()
    return seen


def test_publish_sends_add_hostfwd(fake):
    handle = fake("normal")
    handle.wait_ready(5)
    seen = _api_server(handle.api_socket, {"return": {"id": 7}})
    assert handle.publish("tcp", 8080, 80) == 7
    assert seen == [{"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080, "guest_port": 80}}]


def test_publish_error_is_named(fake):
    handle = fake("normal")
    handle.wait_ready(5)
    _api_server(handle.api_socket, {"error": {"desc": "bad request: add_hostfwd: bad arguments.proto"}})
    with pytest.raises(NetwrapError, match=r"slirp4netns API \(add_hostfwd\): bad request: .*proto"):
        handle.publish("sctp", 1, 2)


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
