"""Probe a backend binary once: its version and the options it accepts.

Builds of one tool differ (pasta of 2023 and of 2026 name options
differently), so the options a run uses are read from the binary's --help.
The result is cached per binary (path, size, mtime) under the user's cache
directory, so a run does not pay for two extra execs; any cache problem just
means probing again.
"""

from __future__ import annotations

import json
import os
from typing import Callable

from netwrap.linux.commands import CommandError, run

_CACHE_VERSION = 2


def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "netwrap", "probes.json")


def _binary_key(path: str) -> list[object]:
    st = os.stat(path)
    return [_CACHE_VERSION, path, st.st_size, st.st_mtime_ns, st.st_ino]


def probe_binary(
    name: str, path: str, *, version_argv: list[str], help_argv: list[str],
    fallback_version: Callable[[], str | None] | None = None,
) -> dict[str, object]:
    """{"version": str|None, "options": [long options]}.

    fallback_version is asked (and its answer cached) when the binary does
    not know its own version.
    """
    key = _binary_key(path)
    cache_file = _cache_path()
    try:
        with open(cache_file) as f:
            cache = json.load(f)
        entry = cache.get(name)
        if entry and entry.get("key") == key:
            return entry["result"]
    except (OSError, ValueError, AttributeError):
        cache = {}
    if not isinstance(cache, dict):
        cache = {}

    version = _version(version_argv)
    if version is None and fallback_version is not None:
        version = fallback_version()
    result = {"version": version, "options": sorted(_options(help_argv))}
    cache[name] = {"key": key, "result": result}
    try:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        tmp = f"{cache_file}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, cache_file)
    except OSError:
        pass  # read-only home, full disk: probing again next time is fine
    return result


def _output(argv: list[str]) -> str:
    try:
        done = run(argv, check=False, timeout=10)
    except CommandError:
        return ""
    # Some builds print "Failed to send N bytes to syslog" between lines.
    lines = (done.stdout + "\n" + done.stderr).splitlines()
    return "\n".join(line for line in lines if "to syslog" not in line)


def _version(argv: list[str]) -> str | None:
    # The first line names the program and its version: "slirp4netns version
    # 1.2.0", "pasta 2025_01_21.4f2c8e7"; a build without one says "unknown".
    first = next((line for line in _output(argv).splitlines() if line.strip()), "")
    words = first.split()
    if len(words) < 2 or "unknown" in words:
        return None
    return words[-1] if words[1] == "version" else words[1]


def _options(argv: list[str]) -> set[str]:
    import re  # only on a cache miss

    return set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]+)", _output(argv)))


def package_version(package: str) -> str | None:
    """The distro package's version, for builds that do not know their own."""
    try:
        done = run(["dpkg-query", "-W", "-f", "${Version}", package], check=False, timeout=10)
    except CommandError:
        return None
    return done.stdout.strip() or None if done.status == 0 else None
