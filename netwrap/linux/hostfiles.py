"""Reading the host's own files (resolv.conf, hosts, /proc/net tables).

They describe the machine, not input the user gave, so a missing or
unreadable one means "nothing there" rather than an error: netwrap then
falls back to its defaults, as a resolver library would.
"""

from __future__ import annotations


def read_host_file(path: str) -> str:
    """The file's text, undecodable bytes replaced; "" if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def local_ipv4(fib_trie: str) -> list[str]:
    """The local IPv4 addresses in /proc/net/fib_trie's text (loopback's included).

    The FIB lists every address a namespace owns, without an ioctl per interface.
    """
    out, last = [], None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            last = text[4:]
        elif last and text.startswith("/32 host LOCAL"):
            out.append(last)
    return out


def ipv6_by_interface(if_inet6: str) -> list[tuple[bytes, str]]:
    """(16-byte address, interface name) for each line of /proc/net/if_inet6's text."""
    out = []
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) >= 6 and len(fields[0]) == 32:
            try:
                out.append((bytes.fromhex(fields[0]), fields[-1]))
            except ValueError:
                continue
    return out
