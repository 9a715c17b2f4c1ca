"""A select() loop on a thread of its own, with the lifecycle the run's services share.

start() returns once the thread is in its loop; stop(deadline) wakes it
through a pipe and waits for it until the deadline (time.monotonic()), and
then gives up on it: the thread is a daemon, and its owner closes the fds it
watched, which ends it at its next select(). Both are idempotent.

The thread never raises into the run: an exception in a handler ends the
loop and is reported through `on_error` (the owner prints it as a warning).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable

from netwrap.errors import NetwrapError

READY_TIMEOUT = 5.0


class LoopThread:
    def __init__(self, *, name: str, handlers: dict[int, Callable[[], None]],
                 timeout: Callable[[], float | None], tick: Callable[[], None],
                 on_error: Callable[[str], None]) -> None:
        """handlers: fd -> called when it is readable; timeout(): how long the
        next select() may wait (None: until an fd is readable); tick(): after
        every wake-up, for work that is due by the clock."""
        self.name = name
        self._handlers = dict(handlers)
        self._timeout = timeout
        self._tick = tick
        self._on_error = on_error
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._wake_r = self._wake_w = -1
        self._stopped = False

    def start(self) -> None:
        if self._thread is not None or self._stopped:
            return
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT):
            raise NetwrapError(f"{self.name}: the thread did not start")

    def stop(self, deadline: float) -> bool:
        """Stop by `deadline`; False if the thread was still running then (abandoned)."""
        if self._stopped:
            return True
        self._stopped = True
        if self._thread is None:
            return True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # the pipe is full: the thread wakes all the same
        self._thread.join(max(0.0, deadline - time.monotonic()))
        ended = not self._thread.is_alive()
        if ended:  # else the thread may still select() on the pipe: leave it open
            os.close(self._wake_r)
            os.close(self._wake_w)
        return ended

    def _run(self) -> None:
        try:
            self._ready.set()
            self._loop()
        except Exception as exc:  # a bug here must not take the run down with it
            if not self._stopped:
                self._on_error(f"{self.name} stopped: {type(exc).__name__}: {exc}")

    def _loop(self) -> None:
        fds = [self._wake_r, *self._handlers]
        while True:
            timeout = self._timeout()
            readable, _, _ = select.select(fds, [], [], None if timeout is None else max(0.0, timeout))
            for fd in readable:
                if fd == self._wake_r:
                    return
                self._handlers[fd]()
            self._tick()
