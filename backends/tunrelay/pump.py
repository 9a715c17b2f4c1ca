"""Moving a TCP connection's bytes kernel to kernel: os.splice through a pipe.

One :class:`Pump` per relayed connection owns both sockets (the child's,
accepted in the sandbox's netns, and the host's).  Each direction splices
socket -> pipe -> socket; no byte is copied into Python.  The I/O loop calls
:meth:`Pump.run` whenever epoll reports either socket (edge triggered: both
are registered once, for input and output); a call does a bounded amount of
work and says whether it stopped early, so one fast stream cannot starve the
others.

Pipes are borrowed from a :class:`PipePool` only while a direction has bytes
in flight: most of the time a splice out empties the pipe at once and it goes
back.  So idle connections hold no pipe, and the memory a connection can pin
is one pipe per direction.  A direction whose pipe is full stops reading its
source: TCP flow control then pushes back to the sender.

Half-close: EOF on one side is passed on as shutdown(SHUT_WR) once the pipe
is drained; the pump ends when both directions have.  An error (reset,
broken pipe) aborts both sides with a RST (SO_LINGER 0), so an end that
vanished is seen as such by the other.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
F_SETPIPE_SZ = 1031
# Bigger pipes mean fewer syscalls per MiB (1 MiB measured a few per cent
# over 512 KiB on one download stream); an unprivileged user's pipes are
# capped by fs.pipe-user-pages-soft (16384 pages by default), so the pool
# keeps its idle pipes few and falls back to the default size when refused.
# Capacity costs no memory until bytes are in flight.
PIPE_SIZE = 1024 * 1024
ROUNDS = 8  # splices per direction per run() before yielding to other flows
# How a pump's sockets are watched: both ways, once, edge triggered.
PUMP_EVENTS_HINT = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_LINGER_RST = struct.pack("ii", 1, 0)

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)


class PipePool:
    def __init__(self, size: int = PIPE_SIZE, keep: int = 32) -> None:
        self._size = size
        self._keep = keep
        self._idle: list[tuple[int, int, int]] = []
        self.live = 0  # pipes handed out and not returned

    def get(self) -> tuple[int, int, int]:
        """(read fd, write fd, capacity)."""
        self.live += 1
        if self._idle:
            return self._idle.pop()
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        size = 65536
        if self._size > size:
            try:
                size = fcntl.fcntl(w, F_SETPIPE_SZ, self._size)
            except OSError:
                pass  # over the user's pipe budget: the default will do
        return r, w, size

    def put(self, pipe: tuple[int, int, int], empty: bool = True) -> None:
        self.live -= 1
        if empty and len(self._idle) < self._keep:
            self._idle.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        for r, w, _ in self._idle:
            os.close(r)
            os.close(w)
        self._idle.clear()


class _Direction:
    __slots__ = ("src", "dst", "pipe", "inflight", "eof", "done", "bytes")

    def __init__(self, src: int, dst: int) -> None:
        self.src = src
        self.dst = dst
        self.pipe: tuple[int, int, int] | None = None
        self.inflight = 0
        self.eof = False
        self.done = False  # EOF passed on
        self.bytes = 0


class Pump:
    """Both directions of one connection.  ``a`` is the child's socket."""

    __slots__ = ("a", "b", "_pool", "_dirs", "closed", "tag", "_graveyard")

    def __init__(self, a: socket.socket, b: socket.socket, pool: PipePool, tag: object = None,
                 graveyard: list | None = None) -> None:
        self.a = a
        self.b = b
        self._pool = pool
        # Sockets to close are handed to the I/O loop, which closes them once
        # it is done with the current batch of events (fd numbers stay unique).
        self._graveyard = graveyard
        self._dirs = (_Direction(a.fileno(), b.fileno()), _Direction(b.fileno(), a.fileno()))
        self.closed = False
        self.tag = tag  # the I/O layer's (a flow it must remember)

    @property
    def bytes_up(self) -> int:
        return self._dirs[0].bytes

    @property
    def bytes_down(self) -> int:
        return self._dirs[1].bytes

    @property
    def buffered(self) -> int:
        return self._dirs[0].inflight + self._dirs[1].inflight

    def run(self) -> bool:
        """Move what can be moved now.  True if work is left (call again
        without waiting for epoll); False if both directions are blocked or
        the pump is finished (see ``closed``)."""
        if self.closed:
            return False
        more = False
        try:
            for d in self._dirs:
                if not d.done and self._step(d):
                    more = True
        except OSError as exc:
            self.abort(exc.errno)
            return False
        if self._dirs[0].done and self._dirs[1].done:
            self.close()
            return False
        return more

    def _step(self, d: _Direction) -> bool:
        pool = self._pool
        for _ in range(ROUNDS):
            if d.inflight == 0:
                if d.eof:
                    self._pass_eof(d)
                    return False
                if d.pipe is None:
                    d.pipe = pool.get()
                try:
                    n = os.splice(d.src, d.pipe[1], d.pipe[2], flags=SPLICE_FLAGS)
                except BlockingIOError:
                    pool.put(d.pipe)
                    d.pipe = None
                    return False  # source empty: epoll will say when more comes
                if n == 0:
                    d.eof = True
                    pool.put(d.pipe)
                    d.pipe = None
                    self._pass_eof(d)
                    return False
                d.inflight = n
            try:
                n = os.splice(d.pipe[0], d.dst, d.inflight, flags=SPLICE_FLAGS)
            except BlockingIOError:
                return False  # destination full: keep the pipe, stop reading
            d.inflight -= n
            d.bytes += n
            if d.inflight == 0:
                pool.put(d.pipe)
                d.pipe = None
        return True

    def _pass_eof(self, d: _Direction) -> None:
        if not d.done:
            d.done = True
            sock = self.b if d.dst == self.b.fileno() else self.a
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already gone: the other direction will notice

    def abort(self, err: int | None = None) -> None:
        """End both sides at once with a RST."""
        if self.closed:
            return
        for s in (self.a, self.b):
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for d in self._dirs:
            if d.pipe is not None:
                self._pool.put(d.pipe, empty=d.inflight == 0)
                d.pipe = None
        if self._graveyard is not None:
            self._graveyard.extend((self.a, self.b))
        else:
            self.a.close()
            self.b.close()


def is_again(exc: OSError) -> bool:
    return exc.errno in _AGAIN
