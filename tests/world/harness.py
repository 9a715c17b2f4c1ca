"""Building the test world, and the `World` object tests talk to.

See the package docstring (world/__init__.py) for the API.  open_world() does
the work in this order, registering each undo right after acquiring (one
ExitStack), so a failure at any step, or the end of the session, leaves
nothing behind:

  stale leftovers of dead runs -> temp dir -> test user -> namespaces ->
  guard -> PKI, runtime copy, /etc layers -> worldd (internet) ->
  stub resolver (host) -> yield -> teardown in reverse.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import addresses, daemons, guard, netns
from .certs import make_pki
from .jsonlog import size_of
from .runtime import copy_runtime
from .testuser import TestUser, cannot_execute, ensure_user

ENTER = Path(__file__).resolve().parent / "enter.py"
LOG_KINDS = ("http", "dns", "echo")
POLL_INTERVAL = 0.02
STOP_TIMEOUT = 5.0


class WorldError(RuntimeError):
    """The world could not be built."""


class WorldRefused(WorldError):
    """The run must stop before any traffic (guard failed, unusable python)."""


@dataclass(frozen=True)
class Mark:
    """Sizes of every log at one moment: read logs `since=` this mark."""

    offsets: dict[str, int] = field(default_factory=dict)

    def offset(self, path: Path | str) -> int:
        return self.offsets.get(str(path), 0)


class World:
    WORLD_V4 = addresses.WORLD_V4
    WORLD_V6 = addresses.WORLD_V6
    DNS_V4 = addresses.DNS_V4
    DNS_V6 = addresses.DNS_V6
    HTTP_PORT = addresses.HTTP_PORT
    HTTP_ALT_PORT = addresses.HTTP_ALT_PORT
    HTTPS_PORT = addresses.HTTPS_PORT
    DNS_PORT = addresses.DNS_PORT
    ECHO_PORT = addresses.ECHO_PORT
    HOST_V4 = addresses.HOST_V4
    HOST_V6 = addresses.HOST_V6
    HOST_LO_V4 = addresses.HOST_LO_V4
    HOST_LO_V6 = addresses.HOST_LO_V6
    HOST_RESOLVER = addresses.HOST_RESOLVER

    def __init__(self, *, tmp: Path, host_ns: str, inet_ns: str, user: TestUser, ca_file: Path,
                 cert_file: Path, key_file: Path, runtime_dir: Path, zone_file: Path) -> None:
        self.tmp = tmp
        self.host_ns = host_ns
        self.inet_ns = inet_ns
        self.user = user
        self.ca_file = ca_file
        self.cert_file = cert_file
        self.key_file = key_file
        self.runtime_dir = runtime_dir
        self.zone_file = zone_file
        self.python = sys.executable
        self.etc_layers = {"host": tmp / "etc-host", "inet": tmp / "etc-inet"}
        self.user_home = tmp / "home"
        self.root_home = tmp / "root-home"
        self.server: daemons.Daemon | None = None  # worldd in the internet namespace
        self.resolver: daemons.Daemon | None = None  # stub resolver on the host's 127.0.0.53
        self._spawned: list[daemons.Daemon] = []
        self._popened: list[subprocess.Popen] = []
        self._counter = 0

    # -- running things in the world ------------------------------------------------

    def netns_path(self, ns: str = "host") -> str:
        return netns.path_of(self._ns_name(ns))

    def _ns_name(self, ns: str) -> str:
        if ns in ("host", "inet"):
            return self.host_ns if ns == "host" else self.inet_ns
        raise ValueError(f"ns must be 'host' or 'inet', not {ns!r}")

    def launcher_prefix(self, *, ns: str = "host", user: bool | str = True,
                        env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None) -> list[str]:
        """enter.py's argv up to (not including) '--'."""
        name = self.user.name if user is True else (user or None)
        home = self.root_home if name is None else self.user_home if name == self.user.name else None
        # -I: enter.py imports nothing of ours, so nothing beside it may shadow the stdlib.
        argv = [self.python, "-I", str(ENTER), "--netns", self.netns_path(ns),
                "--etc", str(self.etc_layers[ns])]
        if name:
            argv += ["--user", name]
        if cwd is not None:
            argv += ["--cwd", str(cwd)]
        merged = {"PYTHONPATH": str(self.runtime_dir)}
        if home is not None:
            merged["HOME"] = str(home)
        merged.update(env or {})
        for key, value in merged.items():
            argv += ["--setenv", f"{key}={value}"]
        return argv

    def launcher_argv(self, argv: Sequence[str], **kw: Any) -> list[str]:
        """The full argv that runs `argv` in the world (see launcher_prefix)."""
        return self.launcher_prefix(**kw) + ["--", *map(str, argv)]

    def run(self, argv: Sequence[str], *, user: bool | str = True, input: str | None = None,
            timeout: float = 60, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
            ns: str = "host") -> subprocess.CompletedProcess:
        """Run `argv` in the host namespace (as the test user unless user=False)."""
        full = self.launcher_argv(argv, ns=ns, user=user, env=env, cwd=cwd)
        stdin = subprocess.DEVNULL if input is None else None
        result = subprocess.run(full, input=input, stdin=stdin, capture_output=True, text=True, timeout=timeout)
        result.args = list(map(str, argv))  # assertion messages show the command, not the launcher
        return result

    def popen(self, argv: Sequence[str], *, user: bool | str = True, env: dict[str, str] | None = None,
              cwd: str | os.PathLike | None = None, ns: str = "host", **popen_kwargs: Any) -> subprocess.Popen:
        """Start `argv` in the host namespace; its pid is the command's pid.

        No new session or process group is made (unless popen_kwargs ask), so
        pty and job-control tests keep control.  Still running at teardown: killed.
        """
        process = subprocess.Popen(self.launcher_argv(argv, ns=ns, user=user, env=env, cwd=cwd), **popen_kwargs)
        self._popened.append(process)
        return process

    def netwrap_cmd(self, *args: str) -> list[str]:
        """`python -m netwrap ARGS` (for run/popen, which set PYTHONPATH)."""
        return [self.python, "-m", "netwrap", *map(str, args)]

    def netwrap_argv(self, *args: str, user: bool | str = True, env: dict[str, str] | None = None,
                     cwd: str | os.PathLike | None = None) -> list[str]:
        """The full launcher argv running netwrap ARGS in the host (for pty.fork etc.)."""
        return self.launcher_argv(self.netwrap_cmd(*args), user=user, env=env, cwd=cwd)

    def netwrap(self, *args: str, user: bool | str = True, **kw: Any) -> subprocess.CompletedProcess:
        return self.run(self.netwrap_cmd(*args), user=user, **kw)

    def user_dir(self, name: str = "t") -> Path:
        """A fresh directory owned by the test user (readable by everyone)."""
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.tmp / "scratch"))
        os.chown(path, self.user.uid, self.user.gid)
        os.chmod(path, 0o755)
        return path

    def program_dir(self, name: str, *, user: bool) -> Path:
        """A fresh directory for programs netwrap should find: the test user's
        when netwrap runs as that user; root's own (0755) when it runs as root,
        as --helper-path requires then."""
        if user:
            return self.user_dir(name)
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.tmp / "scratch"))
        os.chmod(path, 0o755)
        return path

    @staticmethod
    def helpers_from(path: str, *, user: bool) -> tuple[list[str], dict[str, str]]:
        """(netwrap options, environment) making netwrap look up its helper
        programs in `path` (DIR[:DIR...]): the test user's PATH rootless (the
        command then sees that PATH too), --helper-path as root (root ignores
        the caller's PATH)."""
        return ([], {"PATH": path}) if user else (["--helper-path", path], {})

    # -- logs ----------------------------------------------------------------------------

    def _daemons(self) -> list[daemons.Daemon]:
        return [d for d in (self.server, self.resolver, *self._spawned) if d is not None]

    def mark(self) -> Mark:
        """Remember where every log ends now; pass as since= to see only newer records."""
        return Mark({str(d.log_path(kind)): size_of(str(d.log_path(kind)))
                     for d in self._daemons() for kind in LOG_KINDS})

    def http_log(self, since: Mark | None = None) -> list[dict]:
        """Requests the world's web servers saw (ports 80, 8080, 443)."""
        return self.server.log("http", since)

    def dns_log(self, since: Mark | None = None) -> list[dict]:
        """Queries the world's DNS answered (any address, UDP and TCP)."""
        return self.server.log("dns", since)

    def echo_log(self, since: Mark | None = None) -> list[dict]:
        return self.server.log("echo", since)

    def resolver_log(self, since: Mark | None = None) -> list[dict]:
        """Queries the host's stub resolver (127.0.0.53) forwarded."""
        return self.resolver.log("dns", since)

    def wait_log(self, read: Callable[[], list[dict]], predicate: Callable[[dict], bool],
                 timeout: float = 5.0) -> dict:
        """Poll `read()` until a record matches; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            records = read()
            for record in records:
                if predicate(record):
                    return record
            if time.monotonic() >= deadline:
                raise AssertionError(f"no matching log record within {timeout}s; last records: "
                                     f"{json.dumps(records[-5:], indent=1)}")
            time.sleep(POLL_INTERVAL)  # polling a file, not waiting for readiness

    def wait_http(self, predicate: Callable[[dict], bool], timeout: float = 5.0,
                  since: Mark | None = None) -> dict:
        return self.wait_log(lambda: self.http_log(since), predicate, timeout)

    @contextlib.contextmanager
    def zone_records(self, records: dict[str, dict[str, list[str]]]) -> Iterator[None]:
        """Add or replace names in the world's DNS zone (worldd re-reads it), restored afterwards.

        with world.zone_records({"moving.example.test": {"A": ["203.0.113.10"]}}): ...
        Call again inside to change an answer mid-test.
        """
        saved = self.zone_file.read_text()
        try:
            self._write_zone({**json.loads(saved), **records})
            yield
        finally:
            self._write_zone(json.loads(saved))

    def _write_zone(self, zone: dict) -> None:
        # Atomic replace: the daemon never reads half a file, and sees a new inode.
        staged = self.zone_file.with_suffix(".new")
        staged.write_text(json.dumps(zone, indent=1))
        staged.chmod(0o644)
        os.replace(staged, self.zone_file)

    # -- more servers --------------------------------------------------------------------

    def spawn_server(self, ns: str = "host", *, http: Sequence[tuple[str, int]] = (),
                     https: Sequence[tuple[str, int]] = (), dns: Sequence[tuple[str, int]] = (),
                     echo: Sequence[tuple[str, int]] = (), forward: str | None = None) -> daemons.Daemon:
        """Another worldd, e.g. spawn_server(ns="host", http=[("127.0.0.1", 0)]).

        Port 0 picks a free port: handle.port("http").  DNS answers from the
        world's zone unless `forward` names an upstream.  Stopped at teardown
        at the latest; handle.stop() or `with` to stop earlier.
        """
        self._counter += 1
        args = daemons.worldd_argv(
            http=http, https=https, dns=dns, echo=echo, forward=forward,
            zone=self.zone_file if dns and not forward else None,
            cert=self.cert_file if https else None, key=self.key_file if https else None)
        handle = daemons.start(f"server-{self._counter}", self.launcher_prefix(ns=ns, user=False),
                               args, self.tmp / "logs" / f"server-{self._counter}")
        self._spawned.append(handle)
        return handle

    def stop_all(self) -> None:
        """Stop everything the world started (teardown; safe to call twice)."""
        for process in self._popened:
            if process.poll() is None:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(STOP_TIMEOUT)
        for daemon in reversed(self._daemons()):
            daemon.stop()
            # Handler errors do not fail the request that hit them; show them here.
            if daemon.stderr().strip():
                print(f"\nworld: {daemon.name} reported:\n{daemon.stderr().strip()[-4000:]}",
                      file=sys.__stderr__, flush=True)

    def __repr__(self) -> str:
        return f"<World host={self.host_ns} inet={self.inet_ns} tmp={self.tmp}>"


def _remove_stale_tmp() -> None:
    pattern = re.compile(r"^netwrap-world-(\d+)-")
    base = Path(tempfile.gettempdir())
    for entry in base.glob("netwrap-world-*"):
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not os.path.exists(f"/proc/{match.group(1)}"):
            shutil.rmtree(entry, ignore_errors=True)


def _report_leftovers(ns: str) -> None:
    pids = netns.kill_processes_in(ns)
    if pids:
        print(f"\nworld teardown: killed processes left in {ns}: {pids}", file=sys.__stderr__, flush=True)


def _write_layers(world: World) -> None:
    run = world.tmp / "run"
    run.mkdir(mode=0o755)
    (run / "resolv.conf").write_text(f"nameserver {addresses.HOST_RESOLVER}\n")
    # The host sees /etc/resolv.conf as a symlink, like a systemd-resolved host.
    world.etc_layers["host"].mkdir(mode=0o755)
    (world.etc_layers["host"] / "resolv.conf").symlink_to(run / "resolv.conf")
    # The internet's daemons resolve nothing, but if one ever did, it must ask
    # the world's own DNS and never the machine's resolver.
    world.etc_layers["inet"].mkdir(mode=0o755)
    (world.etc_layers["inet"] / "resolv.conf").write_text(f"nameserver {addresses.DNS_V4}\n")
    world.zone_file.write_text(json.dumps(addresses.ZONE, indent=1))
    for home, owner in ((world.user_home, world.user), (world.root_home, None)):
        home.mkdir(mode=0o700)
        if owner is not None:
            os.chown(home, owner.uid, owner.gid)
    (world.tmp / "scratch").mkdir(mode=0o755)
    (world.tmp / "logs").mkdir(mode=0o755)
    for path in (world.tmp, run, world.etc_layers["host"], world.etc_layers["inet"]):
        os.chmod(path, 0o755)
    world.zone_file.chmod(0o644)


@contextlib.contextmanager
def open_world(repo: Path) -> Iterator[World]:
    """Build the world (as root), yield it, tear it all down."""
    if os.geteuid() != 0:
        raise WorldError("the test world needs root")
    pid = os.getpid()
    with contextlib.ExitStack() as stack:
        netns.remove_stale()
        _remove_stale_tmp()
        tmp = Path(tempfile.mkdtemp(prefix=f"netwrap-world-{pid}-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        os.chmod(tmp, 0o755)  # the test user must traverse it (runtime, CA, resolv.conf)

        user = ensure_user()
        why = cannot_execute(user, sys.executable)
        if why:
            raise WorldRefused(
                f"the test user {user.name} cannot run {sys.executable} ({why}); run the tests with "
                "the venv that tests/setup.sh makes: /opt/netwrap-venv/bin/python -m pytest")

        host, inet = f"nwh{pid}", f"nwi{pid}"
        for name in (host, inet):
            netns.add(name)
            stack.callback(netns.delete, name)
            stack.callback(_report_leftovers, name)
        netns.configure(host, inet)
        problems = guard.inspect(host, inet)
        if problems:
            raise WorldRefused("the test world is not sealed, refusing to send anything:\n  "
                               + "\n  ".join(problems))

        pki = make_pki(tmp / "pki", str(pid))
        runtime = copy_runtime(repo, tmp / "rt")
        world = World(tmp=tmp, host_ns=host, inet_ns=inet, user=user, ca_file=pki.ca_file,
                      cert_file=pki.cert_file, key_file=pki.key_file, runtime_dir=runtime,
                      zone_file=tmp / "zone.json")
        _write_layers(world)
        stack.callback(world.stop_all)

        every = "::"
        world.server = daemons.start(
            "worldd", world.launcher_prefix(ns="inet", user=False),
            daemons.worldd_argv(
                http=[(every, addresses.HTTP_PORT), (every, addresses.HTTP_ALT_PORT)],
                https=[(every, addresses.HTTPS_PORT)], dns=[(every, addresses.DNS_PORT)],
                echo=[(every, addresses.ECHO_PORT)], zone=world.zone_file,
                cert=pki.cert_file, key=pki.key_file),
            tmp / "logs" / "world")
        world.resolver = daemons.start(
            "resolver", world.launcher_prefix(ns="host", user=False),
            daemons.worldd_argv(dns=[(addresses.HOST_RESOLVER, addresses.DNS_PORT)], forward=addresses.DNS_V4),
            tmp / "logs" / "resolver")
        yield world
