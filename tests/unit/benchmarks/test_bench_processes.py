"""The benchmarks' one wait-and-stop helper, with real processes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from nwbench.processes import poll_until, runs, stop  # noqa: E402


def test_waits_until_the_process_has_exec_d_its_program():
    process = subprocess.Popen(["sh", "-c", "sleep 0.2; exec sleep 30"])
    try:
        poll_until(process, lambda: runs(process, "/bin/sleep"), name="holder", goal="running sleep",
                   timeout=10, interval=0.01)
        assert runs(process, "sleep") and not runs(process, "sh")
    finally:
        stop([process])
    assert process.returncode == -signal.SIGTERM


def test_a_process_that_exits_first_is_an_error_naming_its_status():
    process = subprocess.Popen(["sh", "-c", "exit 3"])
    with pytest.raises(RuntimeError, match="^server x exited with status 3$"):
        poll_until(process, lambda: False, name="server x", goal="listening", timeout=10, interval=0.01)


def test_the_deadline_is_an_error_and_oserror_means_not_yet():
    process = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(RuntimeError, match=r"^server x not listening on tcp/1 after 0.2s$"):
            poll_until(process, lambda: open("/nonexistent-netwrap-file").close() or True, name="server x",
                       goal="listening on tcp/1", timeout=0.2, interval=0.01)
    finally:
        stop([process, None])
    assert process.returncode == -signal.SIGTERM
