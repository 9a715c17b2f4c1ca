"""Every external program netwrap runs goes through this module.

run() is for short commands (probes, `nft -f`, `ip`): it logs argv and raises
CommandError carrying argv, exit status and stderr. spawn_helper() starts a
long-lived helper (a backend) the way helpers must start: in a session of its
own (terminal signals meant for the command never reach it), with
PR_SET_PDEATHSIG so it dies with netwrap even on SIGKILL, default signal
dispositions, an empty signal mask, and only the fds it is given.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from typing import Sequence

from netwrap.linux import syscalls
from netwrap.errors import NetwrapError

# Set by the CLI from -v; the logging module costs more start-up time than
# netwrap's few debug lines are worth.
verbosity = 0


def debug(message: str) -> None:
    if verbosity > 0:
        sys.stderr.write(f"netwrap: debug: {message}\n")


class CommandError(NetwrapError):
    def __init__(self, argv: Sequence[str], status: int | None, stderr: str) -> None:
        self.argv = list(argv)
        self.status = status
        self.stderr = stderr
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        how = f"exit status {status}" if status is not None else "could not start"
        super().__init__(f"{' '.join(self.argv)}: {how}: {detail}")


def which(name: str) -> str | None:
    """Like shutil.which, without importing shutil on the start path."""
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    for directory in os.get_exec_path():
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = 30.0, check: bool = True) -> "CompletedRun":
    import subprocess  # not needed by a plain run's start path

    debug("run: " + " ".join(argv))
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, None, str(exc)) from None
    except subprocess.TimeoutExpired:
        raise CommandError(argv, None, f"timed out after {timeout:g} s") from None
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr or proc.stdout)
    return CompletedRun(argv=list(argv), status=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)


class CompletedRun:
    __slots__ = ("argv", "status", "stdout", "stderr")

    def __init__(self, *, argv: list[str], status: int, stdout: str, stderr: str) -> None:
        self.argv, self.status, self.stdout, self.stderr = argv, status, stdout, stderr


def spawn_helper(argv: Sequence[str], *, output_fd: int, pass_fds: Sequence[int] = ()) -> int:
    """fork+exec a helper; returns its pid once exec has succeeded.

    Must be called from the thread that will outlive the helper (PDEATHSIG
    follows the forking thread): netwrap's main thread.
    """
    debug("spawn: " + " ".join(argv))
    parent = os.getpid()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: no Python-level cleanup may run here
        try:
            os.close(err_r)
            os.setsid()
            syscalls.set_pdeathsig(signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(output_fd, 1)
            os.dup2(output_fd, 2)
            keep = sorted({0, 1, 2, err_w, *pass_fds})
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            _close_all_except(keep)
            syscalls.reset_signals_for_exec()
            os.execvp(argv[0], list(argv))
        except OSError as exc:
            os.write(err_w, struct.pack("=i", exc.errno or 0))
        finally:
            os._exit(127)
    os.close(err_w)
    data = os.read(err_r, 4)
    os.close(err_r)
    if data:
        os.waitpid(pid, 0)
        err = struct.unpack("=i", data)[0]
        raise CommandError(argv, None, f"{argv[0]}: {os.strerror(err)}")
    return pid


def _close_all_except(keep: list[int]) -> None:
    low = 0
    for fd in keep:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def wait_pid(pid: int, timeout: float) -> int | None:
    """Reap `pid` within `timeout` seconds; its wait status, or None if still running."""
    import select

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None
    try:
        if pidfd is not None:
            select.select([pidfd], [], [], timeout)
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return status if done else None
