"""The ways a probe's client is run: the paths being compared.

  host              the client straight in the world's host namespace: no
                    backend at all, the ceiling every other path is held to
  raw-pasta         pasta --config-net -- CLIENT
  raw-slirp4netns   unshare -rn holder + slirp4netns --configure, client via nsenter
  netwrap-B         netwrap --backend B -- CLIENT

Each path is a context manager around one client run: it sets up what the
client needs (slirp4netns and its namespace holder), yields a function that
turns the client's argv into the argv to run, and tears down after.  Every
path runs as the same user (the world's test user: the rootless path).

To add a path (say tunrelay's NAT path, or netwrap with capture): a Netwrap
with extra arguments in extra_paths() below, or a new class with `running`.
"""

from __future__ import annotations

import os
import select
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .processes import poll_until, runs, stop

if TYPE_CHECKING:
    from world.harness import World

Wrap = Callable[[list[str]], list[str]]
READY_TIMEOUT = 10.0
POLL_INTERVAL = 0.01


@dataclass(frozen=True)
class Path:
    name: str
    label: str  # how the table names it when it is the anchor

    @contextmanager
    def running(self, world: World, user: bool | str) -> Iterator[Wrap]:
        yield lambda argv: list(argv)


@dataclass(frozen=True)
class Host(Path):
    """The client directly in the world's host namespace."""


@dataclass(frozen=True)
class RawPasta(Path):
    @contextmanager
    def running(self, world: World, user: bool | str) -> Iterator[Wrap]:
        # pasta's own defaults, as a user would type it.
        yield lambda argv: ["pasta", "--quiet", "--config-net", "--", *argv]


@dataclass(frozen=True)
class RawSlirp4netns(Path):
    @contextmanager
    def running(self, world: World, user: bool | str) -> Iterator[Wrap]:
        holder = world.popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "infinity"], user=user,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        slirp = None
        try:
            _wait_exec(holder, "sleep")
            with tempfile.TemporaryFile() as log:
                slirp = _start_slirp4netns(world, user, holder.pid, log)
                yield lambda argv: ["nsenter", "--preserve-credentials", "--user", "--net",
                                    "--target", str(holder.pid), *argv]
        finally:
            stop([slirp, holder])


def _wait_exec(process: subprocess.Popen, comm: str) -> None:
    """Wait until `process` runs `comm`: only then has unshare made its namespaces."""
    # A few milliseconds: launcher, unshare, exec.
    poll_until(process, lambda: runs(process, comm), name="namespace holder", goal=f"running {comm}",
               timeout=READY_TIMEOUT, interval=POLL_INTERVAL)


def _start_slirp4netns(world: World, user: bool | str, pid: int, log, extra: list[str] = ()) -> subprocess.Popen:
    """slirp4netns on the holder's namespace, returned once it reports ready on --ready-fd."""
    read_end, write_end = os.pipe()
    try:
        slirp = world.popen(["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback",
                             f"--ready-fd={write_end}", *extra, str(pid), "tap0"], user=user, pass_fds=(write_end,),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        os.close(write_end)
        write_end = -1
        ready, _, _ = select.select([read_end], [], [], READY_TIMEOUT)
        if not ready or os.read(read_end, 1) != b"1":
            slirp.kill()
            slirp.wait()
            log.seek(0)
            raise RuntimeError(f"slirp4netns did not become ready: {log.read().decode(errors='replace')[-300:]}")
        return slirp
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


@dataclass(frozen=True)
class Netwrap(Path):
    backend: str = "auto"
    args: tuple[str, ...] = field(default=())  # more netwrap options, e.g. a capture file

    @contextmanager
    def running(self, world: World, user: bool | str) -> Iterator[Wrap]:
        yield lambda argv: world.netwrap_cmd("--backend", self.backend, *self.args, "--", *argv)


HOST = Host("host", "host, no backend")
RAW: dict[str, Path] = {
    "pasta": RawPasta("raw-pasta", "pasta --config-net"),
    "slirp4netns": RawSlirp4netns("raw-slirp4netns", "slirp4netns --configure --mtu=65520"),
}


def netwrap_path(backend: str) -> Netwrap:
    return Netwrap(f"netwrap-{backend}", f"netwrap --backend {backend}", backend=backend)


def extra_paths() -> list[Path]:
    """Paths beyond host / raw-B / netwrap-B: tunrelay's NAT path."""
    from .tunrelay import extra_paths as tunrelay_paths  # it builds on Netwrap above

    return tunrelay_paths()


def all_paths(backends: list[str]) -> dict[str, Path]:
    paths: list[Path] = [HOST, *RAW.values(), *(netwrap_path(b) for b in backends), *extra_paths()]
    return {p.name: p for p in paths}
