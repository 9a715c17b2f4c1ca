"""Small helpers for addresses in the daemons' argv and logs.  stdlib only."""

from __future__ import annotations

import ipaddress
import socket


def parse_endpoint(text: str) -> tuple[str, int]:
    """'[::]:80', '0.0.0.0:53', '127.0.0.1:0' -> (host, port).

    IPv6 hosts must be bracketed when a port follows; a bare '::' has no port.
    """
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if not rest.startswith(":"):
            raise ValueError(f"expected [host]:port, got {text!r}")
        return host, int(rest[1:])
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:
        raise ValueError(f"expected host:port or [host]:port, got {text!r}")
    return host, int(port)


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def clean(host: str) -> str:
    """Log form of an address: v4-mapped IPv6 as plain IPv4, no scope id."""
    host = host.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
