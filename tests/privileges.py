"""What this test run may do: real root, or root of a user namespace only; a working loopback.

A packager runs the unit tests as an unprivileged user, often inside
`unshare -rn`. There the euid is 0, but it is root of a user namespace that
maps only the caller: files of the host's root appear owned by the overflow
uid (nobody), other uids cannot be switched to, and the new network
namespace's loopback is down. Tests that need real root or loopback skip
there, saying why, instead of failing.
"""

from __future__ import annotations

import os
import socket

import pytest

# The initial user namespace maps every uid to itself (user_namespaces(7)).
_INITIAL_UID_MAP = ["0", "0", "4294967295"]


def _is_real_root() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            lines = [line.split() for line in f if line.strip()]
    except OSError:
        return False
    return lines == [_INITIAL_UID_MAP]


def _loopback_works() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", 0))
            s.sendto(b"", s.getsockname())
        except OSError:
            return False
    return True


REAL_ROOT = _is_real_root()
# Root of a user namespace other than the host's (`unshare -r`).
NAMESPACE_ROOT = os.geteuid() == 0 and not REAL_ROOT
LOOPBACK = _loopback_works()

NOT_REAL_ROOT_REASON = ("needs real root (here root only of a user namespace: the host's root-owned "
                        "files appear owned by nobody, and other users cannot be switched to)")
needs_real_root_if_root = pytest.mark.skipif(NAMESPACE_ROOT, reason=NOT_REAL_ROOT_REASON)
LOOPBACK_REASON = "needs a working loopback (it is down in this network namespace)"
needs_loopback = pytest.mark.skipif(not LOOPBACK, reason=LOOPBACK_REASON)

# Inside a user namespace that does not map uid 0 of the host, /usr and the
# like appear owned by the overflow uid: netwrap's as-root checks of system
# directories then refuse them, as they should.
SYSTEM_DIRS_ROOTS = os.stat("/usr/bin").st_uid == 0
SYSTEM_DIRS_REASON = "the system's directories do not appear owned by root here (a user namespace that does not map root)"
needs_roots_system_dirs = pytest.mark.skipif(not SYSTEM_DIRS_ROOTS, reason=SYSTEM_DIRS_REASON)
