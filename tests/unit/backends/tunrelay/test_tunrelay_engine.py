"""The I/O engine without a sandbox: a datagram socketpair stands in for the
TUN (one frame per datagram, as a TUN fd reads and writes), and the far end
is a UDP echo server on this machine's loopback.  No privileges needed."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from netwrap.backends.tunrelay import engine as engine_mod
from netwrap.backends.tunrelay.core import CoreConfig, RelayCore
from netwrap.backends.tunrelay.engine import Engine
from netwrap.backends.tunrelay.packets import Packet, parse_frame

from _tr_ref import A4, ICMP, echo_request, udp_packet, vnet_hdr
from privileges import LOOPBACK, LOOPBACK_REASON

LO = bytes([127, 0, 0, 1])


@pytest.fixture
def relay():
    """(child end of the fake TUN, engine, warnings), engine running in a thread."""
    child, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tun.setblocking(False)
    warnings: list[str] = []
    # No policy: the loopback echo server is allowed here (Destinations would refuse it).
    core = RelayCore(CoreConfig(offload_udp_csum=False))
    eng = Engine(tun_fd=tun.fileno(), core=core, gate=None, listeners=[], warn=warnings.append)
    thread = threading.Thread(target=eng.run, daemon=True)
    thread.start()
    child.settimeout(5)
    yield child, eng, warnings
    eng.stop()
    thread.join(5)
    assert not thread.is_alive()
    eng.close()
    child.close()
    tun.close()


@pytest.fixture
def echo_server():
    if not LOOPBACK:
        pytest.skip(LOOPBACK_REASON)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        s.settimeout(0.1)
        while not stop.is_set():
            try:
                data, peer = s.recvfrom(65535)
            except TimeoutError:
                continue
            s.sendto(data.upper(), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join(2)
    s.close()


def read_frame(child: socket.socket) -> Packet:
    pkt = parse_frame(child.recv(70000))
    assert isinstance(pkt, Packet)
    return pkt


def test_udp_round_trip_through_a_host_socket(relay, echo_server) -> None:
    child, eng, _ = relay
    child.send(vnet_hdr() + udp_packet(A4, LO, 40000, echo_server, b"ping"))
    reply = read_frame(child)
    assert (reply.src, reply.sport, reply.dst, reply.dport) == (LO, echo_server, A4, 40000)
    assert bytes(reply.payload_view()) == b"PING"
    assert eng.stats()["udp_flows"] == 1


def test_garbage_is_counted_and_the_relay_keeps_serving(relay, echo_server) -> None:
    child, eng, _ = relay
    rng = __import__("random").Random(1)
    for _ in range(2000):
        child.send(vnet_hdr() + rng.randbytes(rng.randrange(0, 200)))
    child.send(b"\x01")  # shorter than the vnet header
    child.send(vnet_hdr() + udp_packet(A4, LO, 40001, echo_server, b"still there"))
    reply = read_frame(child)
    assert bytes(reply.payload_view()) == b"STILL THERE"
    stats = eng.stats()
    assert stats["internal_errors"] == 0
    assert sum(v for k, v in stats.items() if k in ("truncated", "bad_version", "bad_header", "bad_length",
                                                     "unsupported_proto", "fragment", "malformed")) >= 1500


def test_ping_without_any_icmp_socket_is_refused_and_explained(relay, monkeypatch) -> None:
    child, eng, warnings = relay
    monkeypatch.setattr(engine_mod, "icmp_problem", lambda family=None: "ping sockets are not allowed (test)")
    monkeypatch.setattr(eng.icmp, "open", lambda family, target: (setattr(eng.icmp, "problem", "no ping (test)"),
                                                                   None)[1])
    child.send(vnet_hdr() + echo_request(A4, bytes([93, 184, 215, 14]), 77, 1, b"abc"))
    err = read_frame(child)
    assert err.proto == ICMP and (err.icmp_type, err.icmp_code) == (3, 13)  # administratively prohibited
    deadline = time.monotonic() + 2
    while not warnings and time.monotonic() < deadline:
        time.sleep(0.01)
    assert warnings == ["tunrelay cannot relay ping: no ping (test)"]
    assert eng.stats()["icmp_unavailable"] == 1


def test_icmp_problem_names_the_sysctl_and_the_fix(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(engine_mod.socket, "socket", refuse)
    text = engine_mod.icmp_problem()
    assert "net.ipv4.ping_group_range" in text and "raw sockets need root" in text
    assert "sysctl -w net.ipv4.ping_group_range='0 2147483647'" in text


def test_stop_is_prompt() -> None:
    child, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    eng = Engine(tun_fd=tun.fileno(), core=RelayCore(), gate=None, listeners=[])
    thread = threading.Thread(target=eng.run, daemon=True)
    thread.start()
    time.sleep(0.05)  # in its epoll wait, which lasts HOUSEKEEPING seconds when idle
    t = time.monotonic()
    eng.stop()
    thread.join(5)
    # The time is the behaviour here: stop() wakes the wait instead of letting
    # it run out, so the loop ends well inside one idle wait (1 s).
    assert not thread.is_alive() and time.monotonic() - t < 0.5
    eng.close()
    child.close()
    tun.close()


def _bound_device(s: socket.socket) -> bytes:
    return s.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16).rstrip(b"\0")


@pytest.mark.parametrize("family, target, bound", [
    (socket.AF_INET, bytes([198, 18, 0, 9]), b"lo"),
    (socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "2001:db8::9"), b"lo"),
    (socket.AF_INET, LO, b""),  # host loopback (a resolver like 127.0.0.53) is the host, not a way out
    (socket.AF_INET, bytes([127, 0, 0, 53]), b""),
    (socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "::1"), b""),
])
def test_outbound_device_binds_every_host_socket_but_loopback(family, target, bound) -> None:
    # "lo" is the one device every machine has; the kernel reports the binding back.
    device = engine_mod.OutboundDevice("lo")
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(family, kind) as s:
            device.bind(s, target)
            assert _bound_device(s) == bound


def test_outbound_device_check_names_the_failure() -> None:
    assert engine_mod.OutboundDevice("lo").check() is None
    problem = engine_mod.OutboundDevice("nw-none0").check()
    assert problem is not None and problem.startswith("cannot bind sockets to nw-none0 (SO_BINDTODEVICE: No such device)")
