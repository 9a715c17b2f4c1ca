"""Waiting for and stopping the helper processes a benchmark starts in the test world.

These processes come through the world's launcher (subprocess-shaped), and
what they do before they are ready (unshare, setns, bind) has no signal to
wait on, so readiness is polled from /proc at a short interval, with a
deadline and an early exit when the process dies.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterable


def runs(process: subprocess.Popen, program: str) -> bool:
    """Whether `process` has exec'd `program` (the kernel keeps 15 characters of its name)."""
    with open(f"/proc/{process.pid}/comm") as f:
        return f.read().strip() == os.path.basename(program)[:15]


def poll_until(process: subprocess.Popen, ready: Callable[[], bool], *, name: str, goal: str,
               timeout: float, interval: float) -> None:
    """Call ready() until it is true; RuntimeError if `process` exits first or `timeout` passes.

    An OSError from ready() (its /proc files not there yet) counts as not ready.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with status {process.returncode}")
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not {goal} after {timeout}s")
        time.sleep(interval)


def stop(processes: Iterable[subprocess.Popen | None], timeout: float = 5.0) -> None:
    """SIGTERM each one still running, then SIGKILL those not gone within `timeout`."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
