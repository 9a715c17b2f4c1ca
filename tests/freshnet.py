"""Fresh network namespaces for tests that check against the real kernel (root only).

Linux keeps the network namespace per thread: a thread that unshare()s or
setns()es moves alone, and the sockets and processes it creates belong to
the namespace it is in. So a test can own namespaces without forking: it runs
a function in a thread entered into one, gets its result or its exception
back, and its own thread stays where it was. A namespace lives as long as an
fd names it.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from typing import Callable, TypeVar

from netwrap.linux import syscalls

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def new_netns() -> int:
    """An fd naming a new, empty network namespace (lo down); the caller closes it."""
    def make() -> int:
        syscalls.unshare(syscalls.CLONE_NEWNET)
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    return run_in(None, make)


def run_in(netns_fd: int | None, fn: Callable[..., T], *args: object) -> T:
    """fn(*args) in a thread of its own, entered into netns_fd first (None: where we are)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            if netns_fd is not None and _libc.setns(netns_fd, syscalls.CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns: {os.strerror(err)}")
            result.append(fn(*args))
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def sh(netns_fd: int, script: str) -> str:
    """Run a shell script (ip, sysctl) in netns_fd; its stdout. Fails loudly."""
    done = run_in(netns_fd, lambda: subprocess.run(["sh", "-ec", script], capture_output=True, text=True,
                                                   timeout=30))
    if done.returncode != 0:
        raise AssertionError(f"setup failed ({done.returncode}): {script}\n{done.stderr}")
    return done.stdout
