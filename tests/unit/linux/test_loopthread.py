"""netwrap.linux.loopthread: the lifecycle the run's services share."""

from __future__ import annotations

import os
import threading
import time

from netwrap.linux.loopthread import LoopThread


def pipe():
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    return r, w


def test_start_returns_serving_and_stop_is_idempotent():
    r, w = pipe()
    seen = []
    loop = LoopThread(name="test-loop", handlers={r: lambda: seen.append(os.read(r, 10))},
                      timeout=lambda: None, tick=lambda: None, on_error=seen.append)
    loop.start()
    assert any(t.name == "test-loop" for t in threading.enumerate())
    os.write(w, b"hi")
    for _ in range(100):
        if seen:
            break
        time.sleep(0.01)
    assert seen == [b"hi"]
    started = time.monotonic()
    assert loop.stop(started + 5) is True and loop.stop(started + 5) is True
    assert time.monotonic() - started < 1
    assert not any(t.name == "test-loop" for t in threading.enumerate())
    os.close(r)
    os.close(w)


def test_stop_gives_up_at_the_deadline_on_a_stuck_handler():
    r, w = pipe()
    release = threading.Event()
    loop = LoopThread(name="test-stuck", handlers={r: lambda: release.wait(30)},
                      timeout=lambda: None, tick=lambda: None, on_error=lambda e: None)
    loop.start()
    os.write(w, b"x")
    time.sleep(0.1)
    started = time.monotonic()
    assert loop.stop(started + 0.3) is False
    assert 0.25 < time.monotonic() - started < 1.5
    release.set()


def test_ticks_by_the_clock_and_reports_a_failing_handler():
    r, w = pipe()
    ticks, errors = [], []

    def boom():
        raise ValueError("bad input")

    loop = LoopThread(name="test-tick", handlers={r: boom}, timeout=lambda: 0.01,
                      tick=lambda: ticks.append(1), on_error=errors.append)
    loop.start()
    time.sleep(0.2)
    assert len(ticks) > 3  # woken by its timeout, with nothing readable
    os.write(w, b"x")
    time.sleep(0.2)
    assert errors == ["test-tick stopped: ValueError: bad input"]
    assert loop.stop(time.monotonic() + 1) is True
    os.close(r)
    os.close(w)
