"""Publish rows: iperf3's server inside, its client in the world's internet
namespace, through a published port on the world host's address.

The client sends (the direction a published server receives in), one stream.
Each repetition runs every side of a row once, alternating.  Sides:

  raw-pasta         pasta --config-net -t HOST:INNER -- iperf3 -s -1
  raw-slirp4netns   unshare -rn holder + slirp4netns --api-socket, add_hostfwd, iperf3 -s -1 via nsenter
  netwrap-B         netwrap --backend B --publish HOST:INNER -- iperf3 -s -1

The server is started first; the client retries until a test completes
(pasta and slirp4netns accept on the host before the server listens inside).
Reported, never asserted.
"""

from __future__ import annotations

import itertools
import json
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from . import parse
from .paths import _start_slirp4netns, _wait_exec
from .processes import stop
from .rows import Result, Target

if TYPE_CHECKING:
    from world.harness import World

INNER_PORT = 5201
TRIES = 40  # client attempts while the server comes up (0.25 s apart)
_ports = itertools.count(31000)



@contextmanager
def _raw_pasta(world: World, user: bool | str, port: int) -> Iterator[subprocess.Popen]:
    server = world.popen(["pasta", "--quiet", "--config-net", "-t", f"{port}:{INNER_PORT}", "-u", "none",
                          "-T", "none", "-U", "none", "--", "iperf3", "-s", "-1", "-p", str(INNER_PORT)],
                         user=user, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield server
    finally:
        stop([server])


def _netwrap(backend: str):
    @contextmanager
    def side(world: World, user: bool | str, port: int) -> Iterator[subprocess.Popen]:
        server = world.popen(world.netwrap_cmd("--backend", backend, "--publish", f"{port}:{INNER_PORT}", "--",
                                               "iperf3", "-s", "-1", "-p", str(INNER_PORT)),
                             user=user, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        try:
            yield server
        finally:
            stop([server])
    return side


@contextmanager
def _raw_slirp4netns(world: World, user: bool | str, port: int) -> Iterator[subprocess.Popen]:
    import tempfile

    holder = world.popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "infinity"], user=user,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slirp = server = None
    folder = world.user_dir("bench-slirp")
    api = folder / "api.sock"
    try:
        _wait_exec(holder, "sleep")
        with tempfile.TemporaryFile() as log:
            slirp = _start_slirp4netns(world, user, holder.pid, log, extra=[f"--api-socket={api}"])
            _add_hostfwd(str(api), port)
            server = world.popen(["nsenter", "--preserve-credentials", "--user", "--net", "--target",
                                  str(holder.pid), "iperf3", "-s", "-1", "-p", str(INNER_PORT)], user=user,
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            yield server
    finally:
        stop([server, slirp, holder])


def _add_hostfwd(api: str, port: int) -> None:
    request = {"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0",
                                                       "host_port": port, "guest_port": INNER_PORT}}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(api)
        s.sendall(json.dumps(request).encode())
        s.shutdown(socket.SHUT_WR)
        reply = s.recv(4096)
    if b'"error"' in reply:
        raise RuntimeError(f"slirp4netns add_hostfwd: {reply.decode(errors='replace')}")


SIDES: dict[str, tuple[str, Callable]] = {
    "raw-pasta": ("pasta --config-net -t", _raw_pasta),
    "raw-slirp4netns": ("slirp4netns add_hostfwd", _raw_slirp4netns),
    "netwrap-pasta": ("netwrap --backend pasta --publish", _netwrap("pasta")),
    "netwrap-slirp4netns": ("netwrap --backend slirp4netns --publish", _netwrap("slirp4netns")),
    "netwrap-tunrelay": ("netwrap --backend tunrelay --publish", _netwrap("tunrelay")),
}


def run_once(world: World, user: bool | str, side: str, seconds: float) -> float:
    """Gbit/s the server inside received from one client run through `side`."""
    port = next(_ports)
    with SIDES[side][1](world, user, port) as server:
        last = ""
        for _ in range(TRIES):
            done = world.run(["iperf3", "--client", world.HOST_V4, "--port", str(port), "--time", f"{seconds:g}",
                              "--connect-timeout", "2000", "--json"], ns="inet", user=False, timeout=seconds + 30)
            try:
                return parse.iperf3_json(done.stdout).gbit_per_second
            except parse.ParseError as exc:
                last = str(exc)
            if server.poll() is not None:
                raise RuntimeError(f"{side}: the server side exited ({server.returncode}); last client error: {last}")
            time.sleep(0.25)
        raise RuntimeError(f"{side}: no completed test in {TRIES} tries: {last}")


def _row(name: str, subject: str, anchor: str, target: Target | None):
    def row(world: World, user: bool | str, reps: int, seconds: float) -> Result:
        samples: dict[str, list[float]] = {subject: [], anchor: []}
        errors: list[str] = []
        for rep in range(reps):
            for side in ((subject, anchor) if rep % 2 == 0 else (anchor, subject)):
                try:
                    samples[side].append(run_once(world, user, side, seconds))
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                    errors.append(str(exc)[:200])
        ours = statistics.median(samples[subject]) if samples[subject] else None
        base = statistics.median(samples[anchor]) if samples[anchor] else None
        ratio = ours / base if ours is not None and base else None
        return Result(row=name, metric="TCP into a published port, 1 stream (iperf3), median", netwrap=ours,
                      anchor=base, anchor_name=SIDES[anchor][0], unit="Gbit/s",
                      target=target.describe() if target else "report only", ratio=ratio,
                      meets_target=target.met(ratio) if target and ratio is not None else None,
                      note=f"failed runs: {'; '.join(errors)}" if errors else "",
                      samples={"netwrap": samples[subject], "anchor": samples[anchor]})
    return row


PUBLISH_ROWS: dict[str, Callable[[World, bool | str, int, float], Result]] = {
    "publish-tcp-pasta": _row("publish-tcp-pasta", "netwrap-pasta", "raw-pasta", Target(min_ratio=0.95)),
    "publish-tcp-slirp4netns": _row("publish-tcp-slirp4netns", "netwrap-slirp4netns", "raw-slirp4netns",
                                    Target(min_ratio=0.95)),
    # The target: tunrelay's relay keeps at least 0.8 of pasta's own forwarding.
    "publish-tcp-tunrelay-vs-pasta": _row("publish-tcp-tunrelay-vs-pasta", "netwrap-tunrelay", "raw-pasta",
                                          Target(min_ratio=0.8)),
    "publish-tcp-tunrelay-vs-slirp4netns": _row("publish-tcp-tunrelay-vs-slirp4netns", "netwrap-tunrelay",
                                                "raw-slirp4netns", None),
}
