"""Probing backend binaries: version and option parsing, and the cache."""

from __future__ import annotations

import os

import pytest

from netwrap.backends import probing
from netwrap.sandbox.init import exit_code


def _fake_binary(tmp_path, name: str, version_text: str, help_text: str) -> str:
    path = tmp_path / name
    path.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then printf "{version_text}"; else printf "{help_text}"; fi\n'
    )
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize(
    "text, version",
    [
        ("slirp4netns version 1.2.0\\ncommit: 656041d\\n", "1.2.0"),
        ("pasta 2025_01_21.4f2c8e7\\nCopyright Red Hat\\n", "2025_01_21.4f2c8e7"),
        ("pasta unknown version\\nCopyright Red Hat\\n", None),
        ("", None),
    ],
)
def test_version_parsing(tmp_path, monkeypatch, text, version):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = _fake_binary(tmp_path, "tool", text, "  --foreground  x\\n  -t, --tcp-ports SPEC\\n")
    info = probing.probe_binary("tool", path, version_argv=[path, "--version"], help_argv=[path, "--help"])
    assert info["version"] == version
    assert {"foreground", "tcp-ports"} <= set(info["options"])


def test_probe_is_cached_per_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = _fake_binary(tmp_path, "tool", "tool 1.0", "  --one")
    probe = lambda: probing.probe_binary("tool", path, version_argv=[path, "--version"], help_argv=[path, "--help"])  # noqa: E731
    first = probe()
    assert first == {"version": "1.0", "options": ["one"]}
    # Same path, size and mtime: the cached answer, though the script now says otherwise.
    st = os.stat(path)
    text = open(path).read()
    open(path, "w").write(text.replace("1.0", "2.0").replace("--one", "--two"))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert probe() == first
    # A changed binary (new mtime) is probed again.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert probe() == {"version": "2.0", "options": ["two"]}


def test_unwritable_cache_still_probes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/no-such-dir")
    path = _fake_binary(tmp_path, "tool", "tool 1.0", "  --one")
    assert probing.probe_binary("tool", path, version_argv=[path, "--version"], help_argv=[path, "--help"])["version"] == "1.0"


@pytest.mark.parametrize("status, code", [(0, 0), (42 << 8, 42), (15, 143), (9, 137), (2, 130)])
def test_exit_code_like_a_shell(status, code):
    assert exit_code(status) == code
