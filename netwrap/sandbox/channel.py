"""The control channel between netwrap and its sandbox.

One AF_UNIX SOCK_SEQPACKET socketpair: message boundaries are kept, so each
message is one JSON object, and file descriptors (TUN, mirror tap, relay
listeners) ride along with it as SCM_RIGHTS. Both ends are CLOEXEC, so the
command never inherits it.
"""

from __future__ import annotations

import json
import socket
from typing import Any

MAX_MESSAGE = 64 * 1024
MAX_FDS = 64


class ChannelClosed(Exception):
    """The other side closed the channel (it exited or exec'd)."""


class Channel:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def pair(cls) -> tuple["Channel", "Channel"]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(a), cls(b)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, op: str, fds: list[int] | tuple[int, ...] = (), **fields: Any) -> None:
        data = json.dumps({"op": op, **fields}).encode()
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.send(data)

    def recv(self) -> tuple[dict[str, Any], list[int]]:
        """Next message and the fds that came with it; ChannelClosed at EOF."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
        if not data:
            for fd in fds:
                socket.close(fd)
            raise ChannelClosed()
        return json.loads(data), fds

    def expect(self, op: str) -> tuple[dict[str, Any], list[int]]:
        """Receive the next message and check it is `op` (or an error report)."""
        msg, fds = self.recv()
        if msg.get("op") == "error":
            raise SandboxError(msg.get("message", "sandbox setup failed"))
        if msg.get("op") != op:
            raise SandboxError(f"protocol error: expected {op!r}, got {msg.get('op')!r}")
        return msg, fds

    def close(self) -> None:
        self.sock.close()


class SandboxError(Exception):
    """The sandbox side reported that its setup failed."""
