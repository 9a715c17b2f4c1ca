"""--publish [HOST_IP:]HOST_PORT:SANDBOX_PORT[/tcp|/udp]: the spec, and whether the host port can be had.

Podman's -p grammar, with the host port required: HOST_IP is an IPv4
address or a bracketed IPv6 one; without it the port is published on every
host address of both families. parse_publish is pure; check_host_port tries
the port on the host (a bind, closed at once), so a busy or forbidden port is
refused before anything starts, with a line naming it.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Iterable

from netwrap.config import PublishedPort
from netwrap.errors import UsageError

UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"


def parse_publish(text: str) -> PublishedPort:
    """One spec, or UsageError quoting it."""
    def bad(why: str) -> UsageError:
        return UsageError(f"--publish {text!r}: {why} (expected [HOST_IP:]HOST_PORT:SANDBOX_PORT[/tcp|/udp])")

    body, slash, proto = text.partition("/")
    if slash:
        if proto not in ("tcp", "udp"):
            raise bad(f"unknown protocol {proto!r}")
    else:
        proto = "tcp"
    host_ip: str | None = None
    if body.startswith("["):
        address, bracket, rest = body[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise bad("an IPv6 HOST_IP is written [ADDRESS]:HOST_PORT:SANDBOX_PORT")
        host_ip = _address(address, 6, bad)
        ports = rest[1:].split(":")
    else:
        parts = body.split(":")
        if len(parts) == 3:
            host_ip = _address(parts[0], 4, bad)
            ports = parts[1:]
        else:
            ports = parts
    if len(ports) != 2:
        raise bad("HOST_PORT and SANDBOX_PORT are both needed")
    host_port, sandbox_port = (_port(p, bad) for p in ports)
    return PublishedPort(proto=proto, host_ip=host_ip, host_port=host_port, sandbox_port=sandbox_port)


def _address(text: str, version: int, bad) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise bad(f"{text!r} is not an IP address") from None
    if address.version != version:
        raise bad("an IPv6 HOST_IP goes in brackets" if address.version == 6 else f"{text!r} is not an IPv6 address")
    return str(address)


def _port(text: str, bad) -> int:
    if not text.isascii() or not text.isdigit():
        raise bad(f"port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise bad(f"port {port} is out of range (1-65535)")
    return port


def check_unique(published: Iterable[PublishedPort]) -> None:
    """Two specs may not claim one host port (same protocol, overlapping addresses)."""
    seen: dict[tuple[str, int], list[str | None]] = {}
    for p in published:
        others = seen.setdefault((p.proto, p.host_port), [])
        if any(o is None or p.host_ip is None or o == p.host_ip for o in others):
            raise UsageError(f"--publish {p.describe()}: host port {p.host_port}/{p.proto} is published twice")
        others.append(p.host_ip)


def unprivileged_port_start(path: str = UNPRIVILEGED_PORT_START) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1024  # the kernel's default


def check_host_port(p: PublishedPort, *, rootful: bool, port_start: int | None = None) -> None:
    """Refuse a host port the backend could not listen on: privileged when rootless, or in use."""
    if not rootful:
        start = unprivileged_port_start() if port_start is None else port_start
        if p.host_port < start:
            raise UsageError(f"--publish {p.describe()}: host port {p.host_port} is privileged (below "
                             f"net.ipv4.ip_unprivileged_port_start = {start}) and netwrap runs rootless")
    for family, address in _bind_addresses(p.host_ip):
        kind = socket.SOCK_STREAM if p.proto == "tcp" else socket.SOCK_DGRAM
        try:
            s = socket.socket(family, kind)
        except OSError:
            continue  # no IPv6 on this host: nothing to be busy there
        with s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == socket.SOCK_STREAM:
                # As a listener would: a port held only by TIME_WAIT leftovers is free.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, p.host_port))
                if kind == socket.SOCK_STREAM:
                    s.listen(1)  # a bind alone does not collide with another unlistened bind
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and p.host_ip is None:
                    continue  # e.g. IPv6 disabled: the wildcard of that family does not exist
                if exc.errno == errno.EADDRINUSE:
                    why = "is in use"
                elif exc.errno == errno.EADDRNOTAVAIL:
                    why = f"cannot be had: {p.host_ip} is not an address of this host"
                else:
                    why = f"cannot be had: {exc.strerror}"
                raise UsageError(f"--publish {p.describe()}: host port {p.host_port}/{p.proto} {why}") from None


def _bind_addresses(host_ip: str | None) -> list[tuple[socket.AddressFamily, str]]:
    if host_ip is None:
        return [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    return [(socket.AF_INET6 if ":" in host_ip else socket.AF_INET, host_ip)]
