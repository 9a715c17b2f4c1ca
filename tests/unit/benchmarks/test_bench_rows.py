"""Rows of the benchmark report: which rows exist, ratios, targets, the table (no processes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from nwbench import paths, report, rows  # noqa: E402
from nwbench.measure import Measurement  # noqa: E402


def test_a_row_per_probe_and_backend_and_the_unregistered_one_marked() -> None:
    specs = {s.name: s for s in rows.network_rows(["pasta", "slirp4netns"], registered={"pasta"})}
    assert specs["tcp-up-4-pasta"].anchor == "raw-pasta" and specs["tcp-up-4-pasta"].missing is None
    assert specs["tcp-down-1-slirp4netns"].anchor == "raw-slirp4netns"
    assert "not a netwrap backend" in specs["tcp-down-1-slirp4netns"].missing
    assert specs["lat-udp-pasta"].target is None


def test_a_backend_without_a_raw_form_is_held_to_every_raw_backend() -> None:
    names = [s.name for s in rows.network_rows(["tunrelay"], registered={"tunrelay"}) if s.probe == "tcp-up-1"]
    assert names == ["tcp-up-1-tunrelay-vs-pasta", "tcp-up-1-tunrelay-vs-slirp4netns",
                     "tcp-up-1-tunrelay-nat-vs-slirp4netns"]


def _measured(probe: str, unit: str, **samples: list[float]) -> dict:
    return {(probe, path.replace("_", "-")): Measurement(probe, path.replace("_", "-"), unit, values)
            for path, values in samples.items()}


def test_evaluate_ratio_target_ceiling() -> None:
    m = _measured("tcp-up-1", "Gbit/s", host=[20.0, 21.0, 22.0], raw_pasta=[9.0, 10.0, 11.0],
                  netwrap_pasta=[9.4, 9.6, 30.0])
    spec = next(s for s in rows.network_rows(["pasta"], {"pasta"}) if s.name == "tcp-up-1-pasta")
    result = rows.evaluate(spec, m, paths.all_paths(["pasta"]))
    assert (result.netwrap, result.anchor, result.ceiling) == (9.6, 10.0, 21.0)
    assert result.ratio == pytest.approx(0.96) and result.meets_target is True
    assert result.of_ceiling == pytest.approx(9.6 / 21.0)
    assert result.note == "spread max/min: netwrap 3.2"  # 30.0 / 9.4
    line = report.table([result]).splitlines()[2]
    assert line.startswith("| tcp-up-1-pasta | TCP upload (client sends), 1 stream (iperf3), median | 9.60 Gbit/s | "
                           "10.0 Gbit/s (pasta --config-net) | 0.960 | ratio >= 0.95 | yes | 21.0 Gbit/s | 0.46 |")


def test_evaluate_without_netwrap_numbers_reports_no_verdict() -> None:
    m = _measured("tcp-up-1", "Gbit/s", host=[20.0], raw_slirp4netns=[3.0])
    spec = next(s for s in rows.network_rows(["slirp4netns"], set()) if s.probe == "tcp-up-1")
    result = rows.evaluate(spec, m, paths.all_paths([]))
    assert (result.netwrap, result.anchor, result.ratio, result.meets_target) == (None, 3.0, None, None)
    assert "| n/a | 3.00 Gbit/s (slirp4netns" in report.table([result])
