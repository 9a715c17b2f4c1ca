"""Every external program netwrap runs goes through this module.

run() is for short commands (probes, `nft -f`, `ip`): it logs argv and raises
CommandError carrying argv, exit status and stderr. spawn_helper() starts a
long-lived helper (a backend) the way helpers must start: in a session of its
own (terminal signals meant for the command never reach it), with
PR_SET_PDEATHSIG so it dies with netwrap even on SIGKILL, default signal
dispositions, an empty signal mask, and only the fds it is given.

Where programs are found: rootless, in the caller's PATH (the caller runs
their own programs anyway). As root, a caller's PATH is not trusted to name
what root executes: helpers come from SYSTEM_PATH, unless --helper-path names
the directories (then only those). Helpers run as root get that same path as
their PATH, so one that starts another program does not use the caller's.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
from typing import Sequence

from netwrap.linux import syscalls
from netwrap.errors import NetwrapError, UsageError

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


# Root's helpers come from here, in this order. /usr/local is included, as in
# sudo's secure_path and systemd's default PATH: it is root's own (root:root
# 0755 on a Debian 12 install) and where a locally built pasta goes. Older
# Debian installs made it root:staff 2775 (writable by group staff); a
# directory root does not own alone is skipped (see unsafe_directory).
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

# Decided once, at import in the netwrap parent: the sandbox's init is a fork
# of it and is uid 0 of its own user namespace when rootless, which must not
# turn a rootless run's lookups into root's.
_started_as_root = os.geteuid() == 0
# --helper-path, once checked (configure_helper_path); None: not given.
_helper_path: tuple[str, ...] | None = None


def configure_helper_path(directories: Sequence[str] | None) -> None:
    """Use only these directories for every later lookup (None: the default rule)."""
    global _helper_path
    _helper_path = tuple(directories) if directories is not None else None


def search_path() -> list[str]:
    """The directories helpers are looked up in, in order."""
    if _helper_path is not None:
        return list(_helper_path)
    if _started_as_root:
        return [d for d in SYSTEM_PATH if unsafe_directory(d) is None]
    return os.get_exec_path()


def searched() -> str:
    """Where search_path() looked, for messages ("pasta not found in ...")."""
    if _helper_path is not None:
        return "--helper-path"
    return "the system PATH" if _started_as_root else "PATH"


def helper_env() -> dict[str, str] | None:
    """The environment of a program netwrap starts (None: netwrap's own, as is)."""
    if _helper_path is None and not _started_as_root:
        return None
    return {**os.environ, "PATH": ":".join(search_path())}


def unsafe_directory(path: str) -> str | None:
    """Why root should not run programs from `path`, or None when it may.

    Someone other than root who can write to the directory, or to one above it
    (where the directory could be renamed and replaced), decides what runs.
    A sticky directory above (/tmp) is fine: only root can rename root's entries there.
    """
    chain = []
    for start in (os.path.abspath(path), os.path.realpath(path)):
        here = start
        while True:
            chain.append(here)
            if here == "/":
                break
            here = os.path.dirname(here)
    for here in dict.fromkeys(chain):
        try:
            st = os.stat(here)
        except OSError as exc:
            return f"{here}: {exc.strerror}"
        first = here in (os.path.abspath(path), os.path.realpath(path))
        if st.st_uid != 0:
            return f"{here} is owned by uid {st.st_uid}, not root"
        if st.st_mode & 0o022 and (first or not st.st_mode & 0o1000):
            return f"{here} is writable by its group or others (mode {st.st_mode & 0o7777:o})"
    return None


def parse_helper_path(text: str, *, as_root: bool) -> tuple[str, ...]:
    """--helper-path DIR[:DIR...] checked: absolute directories, and root's own when running as root."""
    entries = text.split(":")
    for entry in entries:
        if not entry.startswith("/"):
            raise UsageError(f"--helper-path {text!r}: {entry!r} is not an absolute path")
        if not os.path.isdir(entry):
            raise UsageError(f"--helper-path {text!r}: {entry} is not a directory")
        why = unsafe_directory(entry) if as_root else None
        if why is not None:
            raise UsageError(f"--helper-path {text!r}: netwrap runs as root and {why}")
    return tuple(entries)


def which(name: str) -> str | None:
    """Like shutil.which over search_path(), without importing shutil on the start path."""
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    for directory in search_path():
        path = os.path.join(directory, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _resolve(argv: Sequence[str]) -> str:
    # Resolved here rather than by exec*p, which would search netwrap's own PATH.
    if "/" in argv[0]:
        return argv[0]
    path = which(argv[0])
    if path is None:
        raise CommandError(argv, None, f"{argv[0]}: not found in {searched()}")
    return path


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = 30.0, check: bool = True) -> "CompletedRun":
    import subprocess  # not needed by a plain run's start path

    debug("run: " + " ".join(argv))
    path = _resolve(argv)
    try:
        proc = subprocess.run(
            [path, *argv[1:]], input=input, capture_output=True, text=True, timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL, env=helper_env(),
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
    path = _resolve(argv)
    env = helper_env()
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
            if os.geteuid() == 0:
                # A mount namespace of its own, private: whatever a helper
                # unmounts for its own sandbox (slirp4netns --enable-sandbox
                # does) must not propagate through shared mounts such as
                # iproute2's /run/netns, which would wipe every named netns
                # on the host. Rootless helpers make their own user namespace.
                syscalls.unshare(syscalls.CLONE_NEWNS)
                syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(output_fd, 1)
            os.dup2(output_fd, 2)
            keep = sorted({0, 1, 2, err_w, *pass_fds})
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            _close_all_except(keep)
            syscalls.reset_signals_for_exec()
            if env is None:
                os.execv(path, list(argv))
            os.execve(path, list(argv), env)
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
