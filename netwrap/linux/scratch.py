"""Private scratch directories for one run (pid FIFOs, files to bind-mount).

tempfile and shutil would cost start-up time for what is a mkdir and an
unlink or two.
"""

from __future__ import annotations

import os

from netwrap.errors import NetwrapError


def make_private_dir(prefix: str) -> str:
    """A fresh 0700 directory under $XDG_RUNTIME_DIR, $TMPDIR or /tmp."""
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    if not os.access(base, os.W_OK | os.X_OK):
        base = "/tmp"
    sweep_stale(base)
    for _ in range(10):
        path = os.path.join(base, f"netwrap-{prefix}-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise NetwrapError(f"cannot create a private directory in {base}: {exc.strerror}") from None
    raise NetwrapError(f"cannot create a private directory in {base}")


def remove_private_dir(path: str) -> None:
    """Remove a directory made above and the plain files netwrap put in it."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def sweep_stale(base: str) -> None:
    """Remove directories a killed netwrap left here: ours, and their pid is gone.

    A netwrap stopped by SIGKILL cannot clean up after itself; the next run
    does it (names carry the pid that made them).
    """
    try:
        names = os.listdir(base)
    except OSError:
        return
    uid = os.getuid()
    for name in names:
        parts = name.split("-")
        if len(parts) < 4 or parts[0] != "netwrap" or not parts[-2].isdigit():
            continue
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
            if st.st_uid != uid or not os.path.isdir(path) or os.path.islink(path):
                continue
            os.kill(int(parts[-2]), 0)
            continue  # its netwrap is alive
        except ProcessLookupError:
            remove_private_dir(path)
        except (OSError, ValueError):
            continue
