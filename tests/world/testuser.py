"""The unprivileged user rootless tests run as (nwtest), and its checks.

The user is created once per machine (useradd, if missing) and kept: it owns
nothing outside the world's temp dir, whose HOME the harness gives it.
"""

from __future__ import annotations

import grp
import pwd
import subprocess
from dataclasses import dataclass

USER_NAME = "nwtest"
TIMEOUT = 30


@dataclass(frozen=True)
class TestUser:
    name: str
    uid: int
    gid: int
    __test__ = False  # not a pytest test class, despite the name

    @property
    def group(self) -> str:
        return grp.getgrgid(self.gid).gr_name


def ensure_user(name: str = USER_NAME) -> TestUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        try:
            grp.getgrnam(name)
            group = ["--gid", name]  # left over from an earlier, half-done creation
        except KeyError:
            group = ["--user-group"]
        result = subprocess.run(
            ["useradd", *group, "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/bin/bash", "--comment", "netwrap test user", name],
            capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        try:
            # Exit 9 (name in use) is fine if another test run just made the user.
            entry = pwd.getpwnam(name)
        except KeyError:
            raise RuntimeError(f"useradd {name} failed: {result.stderr.strip()}") from None
    return TestUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def cannot_execute(user: TestUser, python: str) -> str | None:
    """Why `user` cannot run `python` (None if it can)."""
    try:
        result = subprocess.run([python, "-c", "import sys"], user=user.uid, group=user.gid,
                                extra_groups=[], capture_output=True, text=True, timeout=TIMEOUT,
                                stdin=subprocess.DEVNULL, cwd="/")
    except OSError as error:
        return str(error)
    if result.returncode != 0:
        return result.stderr.strip() or f"exit status {result.returncode}"
    return None
