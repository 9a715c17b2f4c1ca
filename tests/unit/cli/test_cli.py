"""The CLI's checks: every bad input is a UsageError before anything starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from netwrap.cli import options as cli
from netwrap.errors import UsageError
from privileges import REAL_ROOT


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
        (["--dns-allowed-only", "true"], "--dns-allowed-only needs an allow list"),
        (["--dns-allowed-only", "--deny", "192.0.2.1", "true"], "--dns-allowed-only needs an allow list"),
        (["--dns-allowed-only", "--offline", "--allow", "www.example.test", "true"], "exclude each other"),
        (["-i", "nw-no-such0", "true"], "--iface nw-no-such0: no such interface"),
        (["--iface", "../eth0", "true"], "not an interface name"),
        (["--iface", "x" * 16, "true"], "not an interface name"),  # IFNAMSIZ is 16 with its NUL
        # lo's addresses (127.0.0.1, ::1) are host-scoped: nothing can leave from them.
        (["-i", "lo", "true"], "--iface lo: it has no IPv4 address$"),
    ],
)
def test_bad_input_is_a_usage_error(argv, message):
    with pytest.raises(UsageError, match=message):
        cli.parse(argv)


def test_dns_allowed_only_is_off_unless_asked():
    assert cli.parse(["--allow", "www.example.test:80", "true"]).dns_allowed_only is False
    config = cli.parse(["--allow", "www.example.test:80", "--dns-allowed-only", "true"])
    assert config.dns_allowed_only is True


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


@pytest.mark.parametrize("args", [["--bogus", "true"], ["--backend", "nope", "true"], [], ["backends", "extra"],
                                  ["-i", "nw-no-such0", "true"], ["--iface", "lo", "true"]])
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


# Packages that must stay off a plain run's start path (DESIGN.md, Dependencies):
# only attrs may load there. Module names as imported (python-pcapng is pcapng).
SLOW = ("sh", "psutil", "pyroute2", "pcapng")


def imported_modules(*argv: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime ARGV`; its result and every module it imported.

    -X importtime lists each import on stderr, also those of processes forked
    from it (the sandbox's init), so nothing imported after start-up escapes.
    """
    done = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    return done, imported


def slow_among(imported: set[str]) -> set[str]:
    return {m for m in imported for name in SLOW if m == name or m.startswith(name + ".")}


def test_the_guard_sees_a_slow_import():
    # The check itself works: a start path that did import one would fail it.
    done, imported = imported_modules("-c", "import netwrap, pcapng")
    assert done.returncode == 0, done.stderr
    assert "pcapng" in slow_among(imported)
    assert not slow_among(imported) - {m for m in imported if m.startswith("pcapng")}


@pytest.mark.parametrize("code", ["import netwrap", "import netwrap.cli", "import netwrap.cli.main"])
def test_import_does_not_load_slow_dependencies(code):
    done, imported = imported_modules("-c", code)
    assert done.returncode == 0, done.stderr
    assert code.split()[-1] in imported  # the check itself works
    assert slow_among(imported) == set()


def test_help_does_not_load_slow_dependencies():
    done, imported = imported_modules("-m", "netwrap", "--help")
    assert done.returncode == 0
    assert "netwrap.cli.options" in imported  # the check itself works
    assert slow_among(imported) == set()


def test_a_plain_run_does_not_load_slow_dependencies():
    done, imported = imported_modules("-m", "netwrap", "--backend", "tunrelay", "--", "true", timeout=60)
    if done.returncode != 0 and not REAL_ROOT:
        # Rootless it needs unprivileged user namespaces and /dev/net/tun; CI runs this as root.
        # As root of a user namespace (`unshare -r`) it runs as root but cannot use the host's
        # root-owned helpers and ping group range.
        pytest.skip(f"a plain run is not possible here as uid {os.geteuid()}: {done.stderr.splitlines()[-1:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    # The check itself works: the run really went through the sandbox and the backend.
    assert {"netwrap.sandbox.supervisor", "netwrap.backends.tunrelay.engine", "attrs"} <= imported
    assert slow_among(imported) == set()


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


def _an_interface_with_ipv4() -> tuple[str, str]:
    """(name, address) of a host interface with a global IPv4 address, read by pyroute2."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=socket.AF_INET):
            if a["scope"] == 0:
                return names[a["index"]], a.get_attr("IFA_LOCAL")
    pytest.skip("this machine has no interface with a global IPv4 address")


def test_iface_keeps_the_interfaces_addresses_and_needs_the_capability():
    from netwrap import backends
    from netwrap.errors import NetwrapError

    name, address = _an_interface_with_ipv4()
    config = cli.parse(["-i", name, "true"])
    assert config.outbound_interface is not None
    assert config.outbound_interface.name == name and address in config.outbound_interface.ipv4
    assert config.outbound_interface.index == socket.if_nametoindex(name)
    assert backends.required_capabilities(config) == {"outbound-interface": f"--iface {name}"}
    with pytest.raises(NetwrapError, match=f"--iface {name} needs outbound-interface, which backend fake lacks"):
        backends.check_capabilities(_FakeBackend(), config)
