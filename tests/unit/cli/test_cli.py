"""The CLI's checks: every bad input is a UsageError before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from netwrap.cli import options as cli
from netwrap.errors import UsageError


def test_command_after_double_dash_is_kept_whole():
    config = cli.parse(["--summary", "--", "curl", "-s", "--max-time", "3", "http://x/"])
    assert config.command == ("curl", "-s", "--max-time", "3", "http://x/")
    assert config.summary is True


def test_options_stop_at_the_command():
    config = cli.parse(["-v", "sh", "-c", "echo --as-root"])
    assert config.command == ("sh", "-c", "echo --as-root")
    assert config.as_root is False
    assert config.verbosity == 1


def test_defaults():
    config = cli.parse(["true"])
    assert config.backend == "auto"
    assert config.allow_host_loopback is False
    assert config.caller_uid == os.getuid()
    assert config.rootful == (os.geteuid() == 0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--bogus", "true"], "unrecognized arguments: --bogus"),
        (["--backend", "nope", "true"], "unknown backend 'nope'"),
        ([], "no command given"),
        (["--"], "no command given"),
        (["-q", "-v", "true"], "exclude each other"),
        (["--backend"], "expected one argument"),
    ],
)
def test_bad_input_is_a_usage_error(argv, message):
    with pytest.raises(UsageError, match=message):
        cli.parse(argv)


def test_user_needs_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError, match="--user needs netwrap to run as root"):
        cli.parse(["--user", "nobody", "true"])


def test_user_resolves_or_fails(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    config = cli.parse(["--user", "nobody", "true"])
    assert config.user is not None and config.user.name == "nobody"
    with pytest.raises(UsageError, match="no such user"):
        cli.parse(["--user", "no-such-user-here", "true"])
    with pytest.raises(UsageError, match="exclude each other"):
        cli.parse(["--user", "nobody", "--as-root", "true"])


def _netwrap(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netwrap", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args", [["--bogus", "true"], ["--backend", "nope", "true"], [], ["backends", "extra"]])
def test_usage_errors_are_one_line_and_exit_2(args):
    done = _netwrap(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("netwrap: error: ")
    assert "Traceback" not in done.stderr


def test_help_and_version():
    done = _netwrap("--help")
    assert done.returncode == 0
    assert "netwrap [OPTIONS] [--] COMMAND" in done.stdout
    assert "--allow-host-loopback" in done.stdout and "netwrap doctor" in done.stdout
    done = _netwrap("--version")
    assert done.returncode == 0
    import netwrap

    assert done.stdout.strip() == f"netwrap {netwrap.__version__}"


SLOW = ("pyroute2", "sh")


@pytest.mark.parametrize("code", ["import netwrap", "import netwrap.cli"])
def test_import_does_not_load_slow_dependencies(code):
    check = f"{code}\nimport sys\nprint(sorted(m for m in {SLOW!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_does_not_load_slow_dependencies():
    # -X importtime lists every module imported, on stderr.
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "netwrap", "--help"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "netwrap.cli" in imported  # the check itself works
    for name in SLOW:
        assert not {m for m in imported if m == name or m.startswith(name + ".")}, name


class _FakeBackend:
    name = "fake"
    capabilities = frozenset({"ipv4", "tcp"})


def test_options_map_to_capabilities_and_missing_ones_are_refused():
    from netwrap import backends
    from netwrap.errors import NetwrapError

    config = cli.parse(["--allow-host-loopback", "-d", "2001:db8::53", "-d", "192.0.2.53", "true"])
    assert backends.required_capabilities(config) == {"host-loopback": "--allow-host-loopback",
                                                      "ipv6": "--dns 2001:db8::53"}
    with pytest.raises(NetwrapError, match="--allow-host-loopback needs host-loopback, which backend fake lacks"):
        backends.check_capabilities(_FakeBackend(), config)
    backends.check_capabilities(_FakeBackend(), cli.parse(["-d", "192.0.2.53", "true"]))  # nothing needed
