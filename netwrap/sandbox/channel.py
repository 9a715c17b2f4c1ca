"""The control channel between netwrap and its sandbox.

One AF_UNIX SOCK_SEQPACKET socketpair: message boundaries are kept, so each
message is one datagram (netwrap.sandbox.messages says what is in it and in
which order), and file descriptors (TUN, relay listeners) ride along with it
as SCM_RIGHTS. Both ends are CLOEXEC, so the command never inherits it.
"""

from __future__ import annotations

import os
import socket
from typing import Sequence, TypeVar

from netwrap.sandbox import messages
from netwrap.sandbox.messages import Conversation, Message, Side

MAX_MESSAGE = 64 * 1024
MAX_FDS = 64

M = TypeVar("M")


class ChannelClosed(Exception):
    """The other side closed the channel (it exited or exec'd)."""


class SandboxError(Exception):
    """The sandbox side reported that its setup failed."""


class Channel:
    """One end: sends and receives typed messages, each checked against the conversation's order."""

    def __init__(self, sock: socket.socket, conversation: Conversation) -> None:
        self.sock = sock
        self.conversation = conversation

    @classmethod
    def pair(cls) -> tuple["Channel", "Channel"]:
        """(netwrap's end, the sandbox's end)."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return cls(a, Conversation(side=Side.PARENT)), cls(b, Conversation(side=Side.SANDBOX))

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: Message, fds: Sequence[int] = ()) -> None:
        self.conversation.sent(msg)
        data = messages.encode(msg)
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.send(data)

    def recv(self) -> tuple[Message, list[int]]:
        """Next message and the fds that came with it; ChannelClosed at EOF,
        messages.ProtocolError (fds closed) for one that is malformed or out of order."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
        try:
            if not data:
                raise ChannelClosed()
            msg = messages.decode(data)
            self.conversation.received(msg, fds=len(fds))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return msg, fds

    def expect(self, kind: type[M]) -> tuple[M, list[int]]:
        """Receive the next message and check it is a `kind` (SandboxError if the sandbox failed)."""
        msg, fds = self.recv()
        if isinstance(msg, messages.Failed):
            raise SandboxError(msg.message)
        if not isinstance(msg, kind):  # the order table allows more than one message here
            for fd in fds:
                os.close(fd)
            raise messages.ProtocolError(f"protocol error: expected {kind.__name__}, got {messages.op_of(msg)!r}")
        return msg, fds

    def close(self) -> None:
        self.sock.close()
