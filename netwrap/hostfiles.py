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
