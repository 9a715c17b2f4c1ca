"""The sandbox's /etc/resolv.conf and /etc/hosts, and the flags that shape them.

Pure functions of their inputs: parsing --dns and --add-host and rendering
the two files. The I/O (reading the host's files, mounting) is elsewhere;
sending every DNS flow to a forced resolver is netwrap.dns.path's job.
"""

from __future__ import annotations

import ipaddress
import re

from netwrap.errors import UsageError

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def parse_dns(value: str) -> str:
    """A --dns value: one IPv4 or IPv6 address, normalised."""
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        raise UsageError(f"--dns {value!r}: not an IPv4 or IPv6 address") from None


def valid_hostname(name: str) -> bool:
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253:
        return False
    return all(_LABEL.match(label) for label in name.split("."))


def parse_add_host(spec: str) -> tuple[str, str]:
    """--add-host NAME:IP (IPv6 may follow the first colon as is, or in brackets)."""
    name, sep, addr = spec.partition(":")
    if not sep:
        raise UsageError(f"--add-host {spec!r}: expected NAME:IP")
    if not valid_hostname(name):
        raise UsageError(f"--add-host {spec!r}: {name!r} is not a valid host name")
    try:
        ip = ipaddress.ip_address(addr.strip("[]"))
    except ValueError:
        raise UsageError(f"--add-host {spec!r}: {addr!r} is not an IPv4 or IPv6 address") from None
    return name, str(ip)


def host_resolv_settings(text: str) -> tuple[list[str], list[str]]:
    """The search domains and options of a resolv.conf, kept for the sandbox."""
    search: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] in ("search", "domain"):
            search = words[1:]  # the last search/domain line wins, as in glibc
        elif words[0] == "options":
            options += words[1:]
    return search, options


def render_resolv_conf(nameservers: list[str], *, search: list[str] = (), options: list[str] = (),
                       origin: str) -> str:
    lines = [f"# written by netwrap for this sandbox: {origin}"]
    lines += [f"nameserver {ns}" for ns in nameservers]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def render_hosts(base: str, extra: list[tuple[str, str]]) -> str:
    """The base hosts file with the --add-host entries appended.

    Appended, as container engines do: a name the base file already defines
    keeps the base's answer (the C library takes the first match).
    """
    if not extra:
        return base
    text = base if base.endswith("\n") or not base else base + "\n"
    text += "# added by netwrap (--add-host)\n"
    text += "".join(f"{ip}\t{name}\n" for name, ip in extra)
    return text
