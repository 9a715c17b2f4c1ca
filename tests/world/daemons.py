"""Starting and stopping worldd processes, ready-fd style.

A daemon is started through enter.py (so it runs in its namespace, with the
world's /etc view), in a session of its own (a Ctrl-C in the terminal goes to
pytest, which then stops the daemons in order) and with PDEATHSIG SIGKILL (if
pytest is killed outright, the daemons go too).  It is ready when it has
written its JSON line to the ready pipe, which it does after binding every
socket; EOF or the deadline instead means it failed, and its stderr says why.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .jsonlog import read_records
from .sockaddr import format_endpoint

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
TESTS_DIR = Path(__file__).resolve().parent.parent


class DaemonError(RuntimeError):
    pass


class Daemon:
    """A running worldd: its listeners, its logs, and stop()."""

    def __init__(self, name: str, process: subprocess.Popen, log_dir: Path, listening: list[dict]) -> None:
        self.name = name
        self.process = process
        self.log_dir = log_dir
        self.listening = listening

    @property
    def pid(self) -> int:
        return self.process.pid

    def port(self, kind: str = "http") -> int:
        """The (first) port of a listener kind: http, https, dns, echo."""
        for entry in self.listening:
            if entry["kind"] == kind:
                return entry["port"]
        raise KeyError(f"{self.name} has no {kind} listener")

    def log_path(self, kind: str = "http") -> Path:
        return self.log_dir / f"{kind}.jsonl"

    def log(self, kind: str = "http", since: Any = None) -> list[dict]:
        """Records of log `kind` (http, dns, echo), after `since` (a Mark)."""
        path = self.log_path(kind)
        offset = since.offset(path) if since is not None else 0
        return read_records(str(path), offset)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL.  Safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def stderr(self) -> str:
        """What the daemon wrote to stdout/stderr (errors only, normally empty)."""
        try:
            return (self.log_dir / "worldd.stderr").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Daemon {self.name} pid={self.pid} {self.listening}>"


def worldd_argv(*, http=(), https=(), dns=(), echo=(), zone: Path | None = None,
                forward: str | None = None, cert: Path | None = None, key: Path | None = None) -> list[str]:
    """worldd's own arguments (without --log-dir/--ready-fd)."""
    argv: list[str] = []
    for flag, endpoints in (("--http", http), ("--https", https), ("--dns", dns), ("--echo", echo)):
        for host, port in endpoints:
            argv += [flag, format_endpoint(host, port)]
    for flag, value in (("--zone", zone), ("--forward", forward), ("--cert", cert), ("--key", key)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def start(name: str, launcher: list[str], args: list[str], log_dir: Path,
          timeout: float = READY_TIMEOUT) -> Daemon:
    """Start worldd with `args` through `launcher` (an enter.py argv up to '--')."""
    log_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    stderr_path = log_dir / "worldd.stderr"
    command = launcher + ["--die-with-parent", "--setenv", f"PYTHONPATH={TESTS_DIR}", "--",
                          sys.executable, "-s", "-m", "world.worldd", *args,
                          "--log-dir", str(log_dir), "--ready-fd", str(write_end)]
    try:
        with open(stderr_path, "ab") as stderr:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                       pass_fds=[write_end], start_new_session=True)
    finally:
        os.close(write_end)
    try:
        line = _read_line(read_end, timeout)
    finally:
        os.close(read_end)
    if not line:
        _reap(process)
        raise DaemonError(f"{name} did not become ready (exit {process.returncode}): "
                          f"{stderr_path.read_text(errors='replace').strip()[-2000:]}")
    return Daemon(name, process, log_dir, json.loads(line)["listening"])


def _read_line(fd: int, timeout: float) -> str:
    """One line from `fd`, or '' on EOF or when `timeout` runs out."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ""
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            return ""
        data += chunk
    return data.split(b"\n", 1)[0].decode()


def _reap(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(STOP_TIMEOUT)
