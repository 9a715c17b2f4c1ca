"""A backend's helper program (pasta, slirp4netns), as the netwrap parent owns it.

Spawned through netwrap.linux.commands.spawn_helper (own session, PDEATHSIG, clean
signals); its combined stdout+stderr is drained into a bounded buffer so it
never blocks on a full pipe, and kept for diagnostics. Stopping is the
helper's own graceful way first, a deadline, then SIGKILL.
"""

from __future__ import annotations

import collections
import os
import select
import signal
import time
from typing import Callable, Sequence

from netwrap.errors import NetwrapError
from netwrap.linux.commands import CommandError, spawn_helper, wait_pid
from netwrap.linux.syscalls import signal_if_alive


def describe(status: int | None) -> str:
    if status is None:
        return "still running"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


class HelperProcess:
    def __init__(self, name: str, argv: Sequence[str], *, pass_fds: Sequence[int] = (),
                 is_diagnostic: Callable[[str], bool] = lambda line: bool(line.strip())) -> None:
        """Start it; raises NetwrapError naming `name` if it cannot be exec'd."""
        self.name = name
        self.argv = list(argv)
        self._is_diagnostic = is_diagnostic
        self._output: collections.deque[bytes] = collections.deque(maxlen=64)
        self._status: int | None = None
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        try:
            self.pid: int | None = spawn_helper(self.argv, output_fd=out_w, pass_fds=pass_fds)
        except CommandError as exc:
            os.close(out_r)
            raise NetwrapError(f"could not start {name}: {exc}") from None
        finally:
            os.close(out_w)  # the helper has its copy: EOF means it is gone
        os.set_blocking(out_r, False)
        self._output_fd: int | None = out_r

    def fileno(self) -> int | None:
        return self._output_fd

    def on_readable(self) -> None:
        if self._output_fd is None:
            return
        try:
            while True:
                chunk = os.read(self._output_fd, 65536)
                if not chunk:
                    os.close(self._output_fd)
                    self._output_fd = None
                    return
                self._output.append(chunk)
        except BlockingIOError:
            return

    def poll(self) -> int | None:
        return self._reap(block=False)

    def wait_exit(self, timeout: float) -> int | None:
        """Drain output until the helper ends or `timeout`; its wait status."""
        deadline = time.monotonic() + timeout
        while self._output_fd is not None and time.monotonic() < deadline:
            if select.select([self._output_fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                self.on_readable()
        if self.pid is not None and self._status is None:
            status = wait_pid(self.pid, max(0.0, deadline - time.monotonic()))
            if status is not None:
                self._status = status
        return self._status

    def wait_ready(self, ready_fd: int, timeout: float, *, tail_lines: int = 1) -> bytes:
        """Wait until the helper writes to `ready_fd`; the bytes it wrote.

        Readiness comes through fds, never by sleeping: select() on `ready_fd`
        and the helper's output, which is drained meanwhile. EOF on either
        before anything arrives means the helper is gone. Raises NetwrapError
        when it ends first or `timeout` passes; the caller stops it.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NetwrapError(f"{self.name} did not become ready within {timeout:g} s{self.tail(tail_lines)}")
            fds = [fd for fd in (ready_fd, self._output_fd) if fd is not None]
            readable, _, _ = select.select(fds, [], [], remaining)
            if self._output_fd in readable:
                self.on_readable()
            if ready_fd in readable:
                data = os.read(ready_fd, 64)
                if data.strip():
                    return data
                raise self.failed_before_ready()  # EOF: its end of ready_fd closed unwritten
            if self._output_fd is None:  # EOF on its output: it is gone
                raise self.failed_before_ready()

    def diagnostics(self) -> str:
        text = b"".join(self._output).decode(errors="replace")
        return "\n".join(line.strip() for line in text.splitlines() if self._is_diagnostic(line))

    def tail(self, lines: int = 1) -> str:
        """The last diagnostic lines, as ': a; b' for an error message, or ''."""
        found = self.diagnostics().splitlines()
        return ": " + "; ".join(found[-lines:]) if found else ""

    def failed_before_ready(self) -> NetwrapError:
        """The error for a helper that ended before it was ready (read its last words first)."""
        status = self.wait_exit(2.0)
        return NetwrapError(f"{self.name} exited ({describe(status)}) before it was ready{self.tail(3)}")

    def stop(self, timeout: float = 2.0, *, graceful: Callable[[], None] | None = None) -> None:
        """graceful() (default SIGTERM), wait up to `timeout`, then SIGKILL. Idempotent."""
        if self.pid is not None and self._reap(block=False) is None:
            if graceful is not None:
                graceful()
            else:
                signal_if_alive(self.pid, signal.SIGTERM)
            status = wait_pid(self.pid, timeout)
            if status is not None:
                self._status = status
            else:
                # The whole process group (spawn_helper made the helper its
                # leader): a helper stuck before it was ready may have a
                # child of its own stuck too (slirp4netns's, in open()).
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._reap(block=True)
        self.on_readable()
        if self._output_fd is not None:
            os.close(self._output_fd)
            self._output_fd = None

    def _reap(self, *, block: bool) -> int | None:
        if self._status is None and self.pid is not None:
            try:
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self._status = status
        return self._status


class DelegatesToProcess:
    """The Handle methods a helper-backed backend answers from its HelperProcess."""

    process: HelperProcess
    pid: int | None  # the helper's, set by the subclass once it runs
    # A helper only moves packets: the policy is nftables' job in the sandbox.
    enforces_policy = False

    def fileno(self) -> int | None:
        return self.process.fileno()

    def on_readable(self) -> None:
        """Drain the helper's output so it never blocks on a full pipe."""
        self.process.on_readable()

    def poll(self) -> int | None:
        return self.process.poll()

    def diagnostics(self) -> str:
        return self.process.diagnostics()
