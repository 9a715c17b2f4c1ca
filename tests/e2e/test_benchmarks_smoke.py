"""The benchmark runner end to end, tiny: one backend, 1 s runs, two probes.

It builds its own test world (as the real runs do), so it only needs root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"
ROWS = ["startup-pasta", "tcp-down-1-pasta", "lat-udp-pasta"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the runner builds a test world: needs root")
def test_runner_writes_table_json_and_chart(tmp_path: Path) -> None:
    only = [arg for row in ROWS for arg in ("--only", row)]
    done = subprocess.run([sys.executable, str(RUNNER), "--backends", "pasta", *only, "--reps", "1",
                           "--seconds", "1", "--runs", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]

    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| row | metric | netwrap | anchor | ratio | target | met |")
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines[1:]] == ROWS
    for line in lines[2:]:  # network rows: a number on both sides, anchored to raw pasta
        cells = line.split(" | ")
        assert cells[2].split()[0].replace(".", "").isdigit(), line
        assert "(pasta --config-net)" in cells[3], line
    assert "ratio >= 0.95" in lines[2]

    table = "\n".join(line for line in done.stdout.splitlines() if line.startswith("|"))
    assert table in (tmp_path / "results.md").read_text()
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [r["row"] for r in doc["rows"]] == ROWS
    paths = {(m["probe"], m["path"]) for m in doc["measurements"] if m["samples"]}
    assert paths == {(p, path) for p in ("tcp-down-1", "lat-udp") for path in ("host", "raw-pasta", "netwrap-pasta")}
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="the runner builds a test world: needs root")
def test_publish_rows_run(tmp_path: Path) -> None:
    rows = ["publish-tcp-slirp4netns", "publish-tcp-tunrelay-vs-pasta"]
    only = [arg for row in rows for arg in ("--only", row)]
    done = subprocess.run([sys.executable, str(RUNNER), *only, "--reps", "1", "--seconds", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [r["row"] for r in doc["rows"]] == rows
    for row in doc["rows"]:
        # One measured sample on each side (the client completed a test through the published port).
        assert len(row["samples"]["netwrap"]) == 1 and len(row["samples"]["anchor"]) == 1, row
        assert row["netwrap"] > 0 and row["anchor"] > 0 and row["ratio"] is not None, row
    assert doc["rows"][1]["target"] == "ratio >= 0.8"
    assert "slirp4netns add_hostfwd" in doc["rows"][0]["anchor_name"]
