"""Cut a file back to its last committed size if netwrap dies while writing it.

A buffered write can be cut short by SIGKILL: Linux checks for a fatal
signal before copying each page of a write(2) and returns early when one is
pending. For a capture file that leaves half a block at the end, and tshark
refuses the whole file ("cut short in the middle of a packet"). Measured
here: about 1 SIGKILL in 30-90 under continuous 1 MiB batch writes. No way of
ordering writes avoids it, since every write extends the visible file.

So a small guard process shares the file and waits on a pipe only netwrap
holds. The writer records the size of whole blocks after each write (in a
memfd, with one pwrite, which is atomic against SIGKILL). At a clean close
netwrap says "done" and the guard exits; if the pipe reaches EOF without
it, every writer is gone and the guard truncates the file to the recorded
size. The guard also keeps the file's flock, so a new netwrap run on the same
path waits for it instead of racing its truncate.
"""

from __future__ import annotations

import os
import subprocess
import sys

_DONE = b"done"

# Runs with `python -I -S`: no site, no user paths, nothing but os and sys.
_GUARD_CODE = r"""
import os, signal, sys
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
fd, sizefd = int(sys.argv[1]), int(sys.argv[2])
said = b""
while said != b"done":
    got = os.read(0, 16)
    if not got:
        size = int(os.pread(sizefd, 32, 0) or b"0")
        if os.fstat(fd).st_size > size:
            os.ftruncate(fd, size)
        break
    said += got
"""


class TailGuard:
    """One guard process for one open file descriptor."""

    __slots__ = ("_sizefd", "_pipe", "_proc")

    def __init__(self, fd: int) -> None:
        """Start the guard for `fd`; raises OSError when it cannot."""
        self._sizefd = os.memfd_create("netwrap-capture-size", os.MFD_CLOEXEC)
        try:
            self.commit(0)
            read_end, self._pipe = os.pipe()  # both close-on-exec
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _GUARD_CODE, str(fd), str(self._sizefd)],
                    stdin=read_end,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(fd, self._sizefd),
                    # Out of the terminal's process group: Ctrl-C is for the
                    # command, the guard only ever waits for its pipe.
                    start_new_session=True,
                )
            except BaseException:
                os.close(self._pipe)
                raise
            finally:
                os.close(read_end)
        except BaseException:
            os.close(self._sizefd)
            raise

    def commit(self, size: int) -> None:
        """Record that the file holds whole blocks up to `size` bytes."""
        # Fixed width: a shorter number must overwrite all of a longer one.
        os.pwrite(self._sizefd, b"%20d" % size, 0)

    def release(self, timeout: float = 2.0) -> None:
        """The file is complete: let the guard go without touching it."""
        if self._pipe < 0:
            return
        try:
            os.write(self._pipe, _DONE)
        except OSError:
            pass  # the guard is gone already; nothing left to tell it
        os.close(self._pipe)
        self._pipe = -1
        os.close(self._sizefd)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass  # it exits on its own once it reads "done"
