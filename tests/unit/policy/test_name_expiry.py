"""Learned hostname addresses expire in the kernel; connections already open stay.

The rendering is checked as text; the expiry itself against the real kernel,
in two fresh network namespaces joined by a veth (root only; skipped
elsewhere): the policy's namespace, where the ruleset is loaded and the
addresses are added through netwrap's own netlink message, and a server's.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import threading
import time

import pytest

import freshnet
from netwrap.linux import netlink, nfnetlink
from netwrap.policy import nft as policy_nft
from netwrap.policy.model import build_policy
from netwrap.policy.nft import TABLE, learned_timeout, render_name_update, render_policy

POLICY = build_policy(allow=["www.example.test:8080"])
SERVER = "10.98.0.2"


def test_learned_timeout_has_a_floor_of_a_minute_and_a_cap_of_a_day():
    assert learned_timeout(0) == 60
    assert learned_timeout(5) == 60
    assert learned_timeout(60) == 60
    assert learned_timeout(61) == 61
    assert learned_timeout(3600) == 3600
    assert learned_timeout(86400) == 86400
    assert learned_timeout(2**31 - 1) == 86400


def test_name_update_with_a_timeout():
    text = render_name_update(POLICY, "www.example.test", ["192.0.2.9", "2001:db8::9", "192.0.2.1"], timeout=75)
    assert text == (
        f"add element {TABLE} name_1_v4 {{ 192.0.2.1 timeout 75s, 192.0.2.9 timeout 75s }}\n"
        f"add element {TABLE} name_1_v6 {{ 2001:db8::9 timeout 75s }}\n"
    )


def test_established_flows_are_accepted_before_any_name_set_is_consulted():
    lines = [line.strip() for line in render_policy(POLICY).splitlines()]
    established = lines.index("ct state established,related accept")
    first_set_use = next(i for i, line in enumerate(lines) if "@name_" in line)
    assert established < first_set_use


def test_the_timeout_netlink_attribute():
    data = nfnetlink.nft_add_elements("t", "s", [ipaddress.ip_address("192.0.2.1")],
                                      timeout_ms=1500)
    # NFTA_SET_ELEM_TIMEOUT (4) and NFTA_SET_ELEM_EXPIRATION (5), length 12 each:
    # 8 bytes, big endian, milliseconds (nf_tables.h).
    assert (b"\x0c\x00\x04\x00" + (1500).to_bytes(8, "big")
            + b"\x0c\x00\x05\x00" + (1500).to_bytes(8, "big")) in data


def _root_with_tools() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("nft", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


needs_root = pytest.mark.skipif(_root_with_tools() is not None, reason=str(_root_with_tools()))


@pytest.fixture
def world():
    """(policy netns fd, server netns fd), joined by veth v0 (10.98.0.1) -- v1 (10.98.0.2)."""
    inside, outside = freshnet.new_netns(), freshnet.new_netns()
    try:
        freshnet.sh(inside, f"ip link set lo up\nip link add v0 type veth peer name v1\n"
                            f"ip link set v1 netns /proc/{os.getpid()}/fd/{outside}\n"
                            "ip addr add 10.98.0.1/24 dev v0\nip link set v0 up")
        freshnet.sh(outside, f"ip link set lo up\nip addr add {SERVER}/24 dev v1\nip link set v1 up")
        yield inside, outside
    finally:
        os.close(inside)
        os.close(outside)


def _add(netns: int, timeout_ms: int) -> None:
    """Add SERVER to the name's set the way the policy runtime does: one netlink transaction."""
    def send() -> None:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nfnetlink.NETLINK_NETFILTER) as s:
            s.settimeout(2)
            s.bind((0, 0))
            data = nfnetlink.nft_add_elements(policy_nft.TABLE_NAME, "name_1_v4",
                                              [ipaddress.ip_address(SERVER)],
                                              seq=1, timeout_ms=timeout_ms)
            netlink.request(s, data, "add")

    freshnet.run_in(netns, send)


def _elements(netns: int) -> str:
    text = freshnet.sh(netns, f"nft list set {TABLE} name_1_v4")
    return text.split("elements = ", 1)[1].split("}", 1)[0] if "elements = " in text else ""


def _echo_server(netns: int) -> socket.socket:
    listener = freshnet.run_in(netns, lambda: socket.create_server((SERVER, 8080)))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(100):
            conn.sendall(data)


def _connect(netns: int) -> socket.socket:
    sock = freshnet.run_in(netns, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.settimeout(3)
    sock.connect((SERVER, 8080))
    return sock


@needs_root
def test_a_learned_address_expires_and_an_open_connection_survives_it(world, tmp_path):
    inside, outside = world
    rules = tmp_path / "policy.nft"
    rules.write_text(render_policy(POLICY))
    freshnet.sh(inside, f"nft -f {rules}")
    listener = _echo_server(outside)
    try:
        with pytest.raises(ConnectionRefusedError):  # not learned yet: refused by the policy
            _connect(inside).close()
        _add(inside, timeout_ms=1500)
        assert SERVER in _elements(inside) and "timeout 1s500ms" in _elements(inside)
        conn = _connect(inside)
        conn.sendall(b"before")
        assert conn.recv(100) == b"before"
        time.sleep(2.0)
        assert _elements(inside) == ""  # the kernel removed it
        with pytest.raises(ConnectionRefusedError):
            _connect(inside).close()
        conn.sendall(b"after the element expired")  # established: still accepted
        assert conn.recv(100) == b"after the element expired"
        conn.close()
    finally:
        listener.close()


@needs_root
def test_adding_an_address_again_restarts_its_timeout(world, tmp_path):
    inside, _ = world
    rules = tmp_path / "policy.nft"
    rules.write_text(render_policy(POLICY))
    freshnet.sh(inside, f"nft -f {rules}")
    _add(inside, timeout_ms=1500)
    time.sleep(1.0)
    _add(inside, timeout_ms=1500)
    time.sleep(1.0)  # 2 s after the first addition, 1 s after the second
    assert SERVER in _elements(inside)
    time.sleep(1.0)
    assert _elements(inside) == ""
