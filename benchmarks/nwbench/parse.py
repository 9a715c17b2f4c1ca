"""Pure parsing of what the benchmark tools print: no processes, no I/O.

iperf3 --json       -> Throughput (what the receiving side counted)
sockperf ping-pong  -> Latency (avg, std-dev, percentiles, in microseconds)
/proc/PID/net/tcp|udp -> the ports a namespace listens on (server readiness)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


class ParseError(ValueError):
    """The tool's output holds no measurement (it failed, or printed something unexpected)."""


@dataclass(frozen=True)
class Throughput:
    bits_per_second: float  # as counted by the receiver: the sender's count includes unacked bytes
    streams: int
    reverse: bool  # True: the server sent (iperf3 -R, a download for the client)
    seconds: float
    retransmits: int | None  # the sender's; None when iperf3 did not report it

    @property
    def gbit_per_second(self) -> float:
        return self.bits_per_second / 1e9


def iperf3_json(text: str) -> Throughput:
    """The result of one `iperf3 -c ... --json` run."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"iperf3 printed no JSON ({exc.msg}): {text[:200]!r}") from None
    if not isinstance(doc, dict):
        raise ParseError("iperf3 JSON is not an object")
    if doc.get("error"):
        # iperf3 reports failures in the JSON, sometimes with exit status 0.
        raise ParseError(f"iperf3: {doc['error']}")
    end = doc.get("end") or {}
    received, sent = end.get("sum_received"), end.get("sum_sent")
    if not received or "bits_per_second" not in received:
        raise ParseError("iperf3 JSON has no end.sum_received")
    test = (doc.get("start") or {}).get("test_start") or {}
    return Throughput(
        bits_per_second=float(received["bits_per_second"]),
        streams=int(test.get("num_streams", len(end.get("streams") or []))),
        reverse=bool(test.get("reverse", 0)),
        seconds=float(received.get("seconds", 0.0)),
        retransmits=(sent or {}).get("retransmits"),
    )


@dataclass(frozen=True)
class Latency:
    avg_us: float
    std_dev_us: float
    round_trip: bool  # True: --full-rtt (round trip); False: sockperf's default, half of it
    observations: int
    # "p50", "p99", "p99.9", ... plus "min" and "max", in microseconds
    percentiles: dict[str, float] = field(default_factory=dict)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_AVG = re.compile(r"avg-(rtt|latency)=([0-9.]+) \(std-dev=([0-9.]+)\)")
_OBSERVATIONS = re.compile(r"Total (\d+) observations")
_PERCENTILE = re.compile(r"---> percentile ([0-9.]+) =\s*([0-9.]+)")
_EXTREME = re.compile(r"---> <(MAX|MIN)> observation =\s*([0-9.]+)")


def _percentile_key(text: str) -> str:
    # "99.900" -> "p99.9", "50.000" -> "p50"
    return "p" + text.rstrip("0").rstrip(".")


def sockperf_output(text: str) -> Latency:
    """The result of one `sockperf ping-pong` run (its stdout)."""
    # sockperf colours some lines even into a pipe.
    plain = _ANSI.sub("", text)
    avg = _AVG.search(plain)
    if avg is None:
        # e.g. "sockperf: ERROR: Can`t connect socket": sockperf exits 0 all the same.
        errors = [line for line in plain.splitlines() if "ERROR" in line]
        raise ParseError("sockperf printed no average" + (f": {errors[0].strip()}" if errors else ""))
    observations = _OBSERVATIONS.search(plain)
    percentiles = {_percentile_key(p): float(v) for p, v in _PERCENTILE.findall(plain)}
    percentiles.update({kind.lower(): float(v) for kind, v in _EXTREME.findall(plain)})
    return Latency(
        avg_us=float(avg.group(2)),
        std_dev_us=float(avg.group(3)),
        round_trip=avg.group(1) == "rtt",
        observations=int(observations.group(1)) if observations else 0,
        percentiles=percentiles,
    )


# The `st` column: a listening TCP socket; a bound, unconnected UDP socket (TCP_CLOSE).
_READY_STATE = {"tcp": "0A", "udp": "07"}


def listening_ports(proc_net: str, proto: str) -> set[int]:
    """Local ports ready for clients in a /proc/PID/net/{tcp,udp}[6] table (proto "tcp" or "udp")."""
    state = _READY_STATE[proto]
    ports = set()
    for line in proc_net.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[1]:
            continue
        if fields[3] == state:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
