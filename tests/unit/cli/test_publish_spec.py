"""--publish: the spec grammar, and the host-port checks done before anything starts."""

from __future__ import annotations

import socket

import pytest

from netwrap.cli.publish import check_host_port, check_unique, parse_publish
from netwrap.config import PublishedPort
from netwrap.errors import UsageError


@pytest.mark.parametrize("text, proto, host_ip, host_port, sandbox_port", [
    ("8080:80", "tcp", None, 8080, 80),
    ("8080:80/tcp", "tcp", None, 8080, 80),
    ("5353:53/udp", "udp", None, 5353, 53),
    ("127.0.0.1:8080:80", "tcp", "127.0.0.1", 8080, 80),
    ("[::1]:8080:80/udp", "udp", "::1", 8080, 80),
    ("[2001:DB8::0001]:1:65535", "tcp", "2001:db8::1", 1, 65535),
])
def test_parse(text, proto, host_ip, host_port, sandbox_port):
    assert parse_publish(text) == PublishedPort(proto=proto, host_ip=host_ip, host_port=host_port,
                                                sandbox_port=sandbox_port)


@pytest.mark.parametrize("text, says", [
    ("80", "HOST_PORT and SANDBOX_PORT are both needed"),
    ("8080:80/sctp", "unknown protocol 'sctp'"),
    ("0:80", "port 0 is out of range"),
    ("8080:65536", "port 65536 is out of range"),
    ("8080:-1", "port '-1' is not a number"),
    ("8080:", "port '' is not a number"),
    ("8080-8090:80", "port '8080-8090' is not a number"),
    ("::1:8080:80", "HOST_PORT and SANDBOX_PORT are both needed"),
    ("[127.0.0.1]:8080:80", "'127.0.0.1' is not an IPv6 address"),
    ("host.test:8080:80", "'host.test' is not an IP address"),
    ("[::1]8080:80", "an IPv6 HOST_IP is written [ADDRESS]:HOST_PORT:SANDBOX_PORT"),
    ("1.2.3.4:5:6:7", "HOST_PORT and SANDBOX_PORT are both needed"),
    ("８０:80", "is not a number"),
])
def test_malformed_specs_are_refused_quoting_them(text, says):
    with pytest.raises(UsageError) as info:
        parse_publish(text)
    message = str(info.value)
    assert message.startswith(f"--publish {text!r}: ") and says in message
    assert "\n" not in message


def test_describe_writes_the_spec_back():
    assert PublishedPort(proto="udp", host_ip="::1", host_port=5, sandbox_port=6).describe() == "[::1]:5:6/udp"
    assert PublishedPort(proto="tcp", host_ip=None, host_port=5, sandbox_port=6).describe() == "5:6/tcp"


def test_one_host_port_twice_is_refused():
    same = [parse_publish("8080:80"), parse_publish("127.0.0.1:8080:81")]
    with pytest.raises(UsageError, match="host port 8080/tcp is published twice"):
        check_unique(same)
    # Other protocol, or two distinct addresses: no clash.
    check_unique([parse_publish("8080:80"), parse_publish("8080:80/udp")])
    check_unique([parse_publish("127.0.0.1:8080:80"), parse_publish("127.0.0.2:8080:80")])


def _held(kind: int) -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        s.listen(1)
    return s, s.getsockname()[1]


@pytest.mark.parametrize("kind, proto", [(socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")])
def test_a_busy_host_port_is_refused_naming_it(kind, proto):
    holder, port = _held(kind)
    with holder:
        for host_ip in ("127.0.0.1", None):  # that address, or every address (which includes it)
            p = PublishedPort(proto=proto, host_ip=host_ip, host_port=port, sandbox_port=80)
            with pytest.raises(UsageError, match=f"host port {port}/{proto} is in use"):
                check_host_port(p, rootful=True)
        # The other protocol's port of the same number is free.
        other = "udp" if proto == "tcp" else "tcp"
        check_host_port(PublishedPort(proto=other, host_ip="127.0.0.1", host_port=port, sandbox_port=80),
                        rootful=True)
    # Once released it can be had, and trying it leaves nothing bound.
    p = PublishedPort(proto=proto, host_ip="127.0.0.1", host_port=port, sandbox_port=80)
    check_host_port(p, rootful=True)
    check_host_port(p, rootful=True)


def test_a_privileged_port_is_refused_rootless_only():
    p = PublishedPort(proto="tcp", host_ip="127.0.0.1", host_port=1000, sandbox_port=80)
    with pytest.raises(UsageError, match="host port 1000 is privileged .* = 1024"):
        check_host_port(p, rootful=False, port_start=1024)
    holder, port = _held(socket.SOCK_STREAM)
    holder.close()
    # At or above the limit the port is tried as usual.
    check_host_port(PublishedPort(proto="tcp", host_ip="127.0.0.1", host_port=port, sandbox_port=80),
                    rootful=False, port_start=port)


def test_an_address_the_host_lacks_is_refused():
    p = PublishedPort(proto="tcp", host_ip="192.0.2.77", host_port=8080, sandbox_port=80)
    with pytest.raises(UsageError, match="192.0.2.77 is not an address of this host"):
        check_host_port(p, rootful=True)
