"""tunrelay's benchmark rows and the wrk probe (no processes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from nwbench import paths, probes, rows, tunrelay, wrk  # noqa: E402
from nwbench.parse import ParseError  # noqa: E402

WRK_OUTPUT = """\
Running 3s test @ http://93.184.215.14:80/hello
  2 threads and 100 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    31.02ms   11.10ms 120.52ms   81.11%
    Req/Sec     1.62k   201.32     2.01k    70.00%
  9688 requests in 3.01s, 1.52MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:   3218.60
Transfer/sec:    515.44KB
"""


def test_wrk_output() -> None:
    assert wrk.wrk_output(WRK_OUTPUT) == (3218.60, {"socket_errors": 4, "non_2xx": 2})
    clean = "\n".join(l for l in WRK_OUTPUT.splitlines() if "errors" not in l and "Non-2xx" not in l)
    assert wrk.wrk_output(clean) == (3218.60, {"socket_errors": 0, "non_2xx": 0})
    with pytest.raises(ParseError):
        wrk.wrk_output("unable to connect to 93.184.215.14:80 Connection refused\n")


def test_wrk_probe_uses_the_worlds_web_server() -> None:
    probe = probes.PROBES["http-100"]
    assert probes.SERVERS[probe.server].argv is None  # nothing to start: worldd serves port 80
    argv = probe.client(probes.Endpoint("93.184.215.14", 80), 3)
    assert argv[:3] == ["wrk", "-c", "100"] and argv[-1] == "http://93.184.215.14:80/hello"


def test_tunrelay_rows_carry_the_issues_targets() -> None:
    specs = {s.name: s for s in rows.network_rows(["tunrelay"], registered={"tunrelay"})}
    assert specs["tcp-up-1-tunrelay-vs-slirp4netns"].target.min_ratio == 2.0
    assert specs["tcp-down-1-tunrelay-vs-pasta"].target.min_ratio == 0.8
    assert specs["lat-tcp-tunrelay-vs-pasta"].target.max_ratio == 1.5
    assert specs["http-100-tunrelay-vs-slirp4netns"].target.min_ratio == 1.0
    assert specs["tcp-up-4-tunrelay-vs-pasta"].target is None  # the issue sets none: reported only
    nat = specs["tcp-down-1-tunrelay-nat-vs-slirp4netns"]
    assert (nat.subject, nat.anchor, nat.target.min_ratio) == ("netwrap-tunrelay-nat", "raw-slirp4netns", 0.5)
    assert "not a netwrap backend" in rows.network_rows(["tunrelay"], registered=set())[-1].missing


def test_nat_path_runs_netwrap_with_the_forced_path() -> None:
    path = paths.all_paths(["tunrelay"])["netwrap-tunrelay-nat"]
    assert path is tunrelay.NAT and path.args == ("--tunrelay-tcp", "nat")
