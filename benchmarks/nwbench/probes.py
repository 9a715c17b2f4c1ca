"""What is measured (probes) and the servers they talk to.

A probe is one client command and a parser: given the server's address and
the duration, it builds the client's argv; given the client's stdout, it
returns one number in the probe's unit (plus details kept in the JSON).
Every probe runs unchanged under every path (host, raw backend, netwrap), so
the numbers differ only by the path.

Servers run in the test world's internet namespace, bound to the world
address: the only place benchmark traffic goes.

To add a probe (say wrk with 100 connections): a ServerSpec if it needs a new
server, a client function, a parse function, and a Probe in PROBES.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import parse
from .processes import poll_until, runs, stop

if TYPE_CHECKING:
    from world.harness import World

SERVER_READY_TIMEOUT = 10.0
POLL_INTERVAL = 0.02


@dataclass(frozen=True)
class ServerSpec:
    name: str
    proto: str  # "tcp" or "udp": where its readiness shows in /proc/PID/net
    port: int
    argv: Callable[[str, int], list[str]] | None  # (address, port) -> argv; None: the world serves it already


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int


@dataclass(frozen=True)
class Probe:
    name: str  # row names start with it: "tcp-up-1" -> "tcp-up-1-pasta"
    metric: str  # what the table's metric column says
    unit: str
    higher_is_better: bool
    kind: str  # "throughput" or "latency": picks the row target and the chart panel
    server: str  # a ServerSpec name
    client: Callable[[Endpoint, float], list[str]]  # (server, seconds) -> argv
    parse: Callable[[str], tuple[float, dict[str, Any]]]  # stdout -> (value in unit, details)
    overhead: float = 3.0  # seconds a run takes beyond its duration (for timeouts and estimates)


SERVERS: dict[str, ServerSpec] = {s.name: s for s in (
    # One iperf3 server serves every iperf3 probe: the runner runs one client at a time.
    # --rcv-timeout: a client killed mid-test frees the server after 10 s, not 120.
    ServerSpec("iperf3", "tcp", 5201,
               lambda a, p: ["iperf3", "--server", "--bind", a, "--port", str(p), "--rcv-timeout", "10000"]),
    ServerSpec("sockperf-tcp", "tcp", 11111, lambda a, p: ["sockperf", "server", "-i", a, "-p", str(p), "--tcp"]),
    ServerSpec("sockperf-udp", "udp", 11112, lambda a, p: ["sockperf", "server", "-i", a, "-p", str(p)]),
    ServerSpec("world-http", "tcp", 80, None),  # the world's worldd (wrk probe)
)}


def _iperf3_client(streams: int, reverse: bool) -> Callable[[Endpoint, float], list[str]]:
    def argv(server: Endpoint, seconds: float) -> list[str]:
        return (["iperf3", "--client", server.address, "--port", str(server.port), "--time", f"{seconds:g}",
                 "--parallel", str(streams), "--connect-timeout", "5000", "--json"]
                + (["--reverse"] if reverse else []))
    return argv


def _iperf3_parse(text: str) -> tuple[float, dict[str, Any]]:
    result = parse.iperf3_json(text)
    return result.gbit_per_second, {"retransmits": result.retransmits, "seconds": result.seconds}


def _sockperf_client(tcp: bool) -> Callable[[Endpoint, float], list[str]]:
    def argv(server: Endpoint, seconds: float) -> list[str]:
        # sockperf -t takes whole seconds; --full-rtt: report the round trip, not half of it.
        return (["sockperf", "ping-pong", "-i", server.address, "-p", str(server.port),
                 "-t", str(max(1, round(seconds))), "--full-rtt"] + (["--tcp"] if tcp else []))
    return argv


def _sockperf_parse(text: str) -> tuple[float, dict[str, Any]]:
    result = parse.sockperf_output(text)
    return result.avg_us, {"std_dev_us": result.std_dev_us, "observations": result.observations,
                           **{k: result.percentiles[k] for k in ("p50", "p99", "p99.9") if k in result.percentiles}}


def _throughput(direction: str, streams: int) -> Probe:
    reverse = direction == "down"
    what = "download (server sends)" if reverse else "upload (client sends)"
    return Probe(name=f"tcp-{direction}-{streams}",
                 metric=f"TCP {what}, {streams} stream{'s' if streams > 1 else ''} (iperf3)",
                 unit="Gbit/s", higher_is_better=True, kind="throughput", server="iperf3",
                 client=_iperf3_client(streams, reverse), parse=_iperf3_parse, overhead=1.0)


def _latency(proto: str) -> Probe:
    return Probe(name=f"lat-{proto}", metric=f"{proto.upper()} request/response round trip, avg (sockperf ping-pong)",
                 unit="µs", higher_is_better=False, kind="latency", server=f"sockperf-{proto}",
                 client=_sockperf_client(proto == "tcp"), parse=_sockperf_parse, overhead=2.5)


PROBES: dict[str, Probe] = {p.name: p for p in (
    _throughput("up", 1), _throughput("up", 4), _throughput("down", 1), _throughput("down", 4),
    _latency("tcp"), _latency("udp"),
)}

from .wrk import WRK  # noqa: E402  (wrk.py builds on Probe above)

PROBES[WRK.name] = WRK


def _wait_listening(process: subprocess.Popen, spec: ServerSpec, program: str) -> None:
    """Poll the server's own /proc/PID/net table (its namespace's) until its port is there."""

    def listening() -> bool:
        # Until the launcher has exec'd the server, the pid's /proc/PID/net is
        # some other namespace's (the launcher's before setns): wait for the exec.
        if not runs(process, program):
            return False
        with open(f"/proc/{process.pid}/net/{spec.proto}") as f:
            return spec.port in parse.listening_ports(f.read(), spec.proto)

    poll_until(process, listening, name=f"server {spec.name}", goal=f"listening on {spec.proto}/{spec.port}",
               timeout=SERVER_READY_TIMEOUT, interval=POLL_INTERVAL)


@contextmanager
def servers(world: World, names: set[str], address: str) -> Iterator[dict[str, Endpoint]]:
    """Start the named servers in the world's internet namespace (as root there), stop them after."""
    started: list[subprocess.Popen] = []
    try:
        endpoints = {}
        for name in sorted(names):
            spec = SERVERS[name]
            if spec.argv is None:
                endpoints[name] = Endpoint(address, spec.port)
                continue
            process = world.popen(spec.argv(address, spec.port), ns="inet", user=False,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started.append(process)
            _wait_listening(process, spec, spec.argv(address, spec.port)[0])
            endpoints[name] = Endpoint(address, spec.port)
        yield endpoints
    finally:
        stop(started)
