"""Whether a path can become one of netwrap's output files (capture, flow log).

Checked while the flags are parsed, so a bad path is a usage error (exit 2)
before anything starts, and the check itself creates nothing: a refused run
leaves no empty file behind. Opening the file for real is its owner's job.
"""

from __future__ import annotations

import os
import stat

from netwrap.errors import UsageError


def check_output_path(path: str, *, label: str, regular_file: bool = True) -> None:
    """UsageError, one line starting with `label`, if `path` cannot be written.

    regular_file: an existing path must be a regular file (a capture is
    truncated after an error, and a FIFO would block its open); without it,
    an existing device or FIFO (/dev/stderr) is fine if writable.
    """
    if not path:
        raise UsageError(f"{label}: empty path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{label} {path}: directory {parent} does not exist")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{label} {path}: cannot create files in {parent} (permission denied)") from None
        return
    except OSError as exc:
        raise UsageError(f"{label} {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{label} {path}: is a directory")
    if regular_file and not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{label} {path}: not a regular file")
    if not os.access(path, os.W_OK):
        raise UsageError(f"{label} {path}: not writable (permission denied)")
