"""HelperProcess.wait_ready: the one readiness loop pasta and slirp4netns share.

Real helper processes (small Python scripts) stand in for pasta and slirp4netns: what matters is
what arrives on which fd, and when.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from netwrap.backends.helper_process import HelperProcess
from netwrap.errors import NetwrapError


PRELUDE = "import os, sys, time\nREADY = int(sys.argv[1])\n"


def start(script: str) -> tuple[HelperProcess, int]:
    """`script` runs with READY = the write end of a ready pipe; ours is the read end."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    try:
        process = HelperProcess("fakehelper", [sys.executable, "-c", PRELUDE + script, str(ready_w)], pass_fds=[ready_w])
    finally:
        os.close(ready_w)
    return process, ready_r


@pytest.fixture
def helpers():
    started: list[tuple[HelperProcess, int]] = []

    def _start(script: str) -> tuple[HelperProcess, int]:
        started.append(start(script))
        return started[-1]

    yield _start
    for process, ready_r in started:
        process.stop(1.0)
        os.close(ready_r)


def test_returns_what_the_helper_wrote_once_it_writes_it(helpers):
    process, ready_r = helpers('print("starting", flush=True); time.sleep(0.2); os.write(READY, b"1"); time.sleep(30)')
    began = time.monotonic()
    assert process.wait_ready(ready_r, 20.0) == b"1"
    assert 0.15 < time.monotonic() - began < 5.0  # woken by the write, not by the deadline
    assert process.poll() is None
    assert "starting" in process.diagnostics()  # its output was drained meanwhile


def test_a_helper_that_exits_first_is_named_with_its_status_and_last_words(helpers):
    process, ready_r = helpers('sys.exit("cannot open tun")')
    with pytest.raises(NetwrapError) as info:
        process.wait_ready(ready_r, 20.0)
    assert str(info.value) == "fakehelper exited (exit status 1) before it was ready: cannot open tun"


def test_closing_the_ready_fd_unwritten_is_failure_not_readiness(helpers):
    # slirp4netns dying closes its end of --ready-fd: EOF, not "ready".
    process, ready_r = helpers('os.close(READY); time.sleep(30)')
    began = time.monotonic()
    with pytest.raises(NetwrapError, match="before it was ready"):
        process.wait_ready(ready_r, 20.0)
    assert time.monotonic() - began < 10.0


def test_the_deadline_names_the_helper_and_its_last_line(helpers):
    process, ready_r = helpers('print("still thinking", flush=True); time.sleep(30)')
    began = time.monotonic()
    with pytest.raises(NetwrapError) as info:
        process.wait_ready(ready_r, 0.5)
    assert str(info.value) == "fakehelper did not become ready within 0.5 s: still thinking"
    assert 0.45 < time.monotonic() - began < 5.0
    assert process.poll() is None  # stopping it is the caller's choice
