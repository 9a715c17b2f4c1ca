"""Setup-time calls: the parent asks the sandbox's init to act inside it.

The parent stays in the host's namespaces and (rootless) cannot enter the
sandbox's, but init is root there. During setup, before the command exists,
the parent can ask init to:

  socket   create a socket in the sandbox's netns (bound, listening, with
           options such as IP_TRANSPARENT) and send back its fd
  tun      open a TUN or TAP device there and send back its fd
  run      run a program there as its root (nft, ip, tc), output returned
  write    write a file there (per-netns sysctls under /proc/sys)

Fds come back over the control channel (SCM_RIGHTS) and belong to the caller.
Requests are answered in order; they are only valid until the parent sends
"backend-ready" (init then starts the command).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from netwrap.errors import NetwrapError
from netwrap.sandbox.channel import Channel, ChannelClosed, SandboxError
from netwrap.sandbox.messages import BackendReady, Call, Reply, RunCall, SocketCall, TunCall, WriteCall, op_of

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETTXFILTER = 0x400454D1
IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000


class SandboxCalls:
    """The parent's end: one method per call, raising NetwrapError on failure."""

    def __init__(self, chan: Channel) -> None:
        self._chan = chan

    def _call(self, call: Call) -> tuple[Reply, list[int]]:
        name = op_of(call)
        try:
            self._chan.send(call)
            reply, fds = self._chan.expect(Reply)
        except (OSError, ChannelClosed):
            raise NetwrapError(f"the sandbox ended during setup ({name})") from None
        except SandboxError as exc:  # init could not go on at all
            raise NetwrapError(str(exc)) from None
        if reply.error is not None:
            for fd in fds:
                os.close(fd)
            raise NetwrapError(f"in the sandbox, {name} failed: {reply.error}")
        return reply, fds

    def socket(self, family: int, type: int, proto: int = 0, *, bind: tuple[str | int, ...] | None = None,
               listen: int | None = None, options: list[tuple[int, int, int]] = ()) -> socket.socket:
        _, fds = self._call(SocketCall(family=int(family), type=int(type), proto=int(proto), bind=bind,
                                       listen=listen, options=tuple(tuple(o) for o in options)))
        return socket.socket(fileno=fds[0])

    def tun(self, name: str, flags: int, *, offload: int | None = None, vnet_hdr_size: int | None = None) -> tuple[int, str]:
        reply, fds = self._call(TunCall(name=name, flags=flags, offload=offload, vnet_hdr_size=vnet_hdr_size))
        return fds[0], reply.name or name

    def run(self, argv: list[str], *, input: str | None = None, check: bool = True) -> Reply:
        """The program's exit status, stdout and stderr (fields of the Reply)."""
        reply, _ = self._call(RunCall(argv=tuple(argv), input=input, check=check))
        return reply

    def write(self, path: str, data: str) -> None:
        self._call(WriteCall(path=path, data=data))


# --- init's end ---------------------------------------------------------------------------

def serve(call: Call) -> tuple[Reply, list[int]]:
    """Perform one call inside the sandbox: (the reply, fds to send with it)."""
    try:
        if isinstance(call, SocketCall):
            return _socket(call)
        if isinstance(call, TunCall):
            return _tun(call)
        if isinstance(call, RunCall):
            return _run(call)
        with open(call.path, "w") as f:
            f.write(call.data)
        return Reply(), []
    except (OSError, NetwrapError, ValueError, TypeError) as exc:
        return Reply(error=str(exc)), []


def _socket(call: SocketCall) -> tuple[Reply, list[int]]:
    s = socket.socket(call.family, call.type, call.proto)
    try:
        for level, name, value in call.options:
            s.setsockopt(level, name, value)
        if call.bind is not None:
            s.bind(call.bind)
        if call.listen is not None:
            s.listen(call.listen)
        return Reply(), [s.detach()]
    except BaseException:
        s.close()
        raise


def _tun(call: TunCall) -> tuple[Reply, list[int]]:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", call.name.encode(), call.flags)
        name = struct.unpack("16sH22x", fcntl.ioctl(fd, TUNSETIFF, ifr))[0].rstrip(b"\0").decode()
        if call.vnet_hdr_size is not None:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", call.vnet_hdr_size))
        if call.offload is not None:
            fcntl.ioctl(fd, TUNSETOFFLOAD, call.offload)
        return Reply(name=name), [fd]
    except BaseException:
        os.close(fd)
        raise


def _run(call: RunCall) -> tuple[Reply, list[int]]:
    from netwrap.linux.commands import run

    done = run(list(call.argv), input=call.input, check=call.check)
    return Reply(status=done.status, stdout=done.stdout, stderr=done.stderr), []


def serve_until_ready(chan: Channel) -> BackendReady:
    """Init: answer calls until the parent says the backend is ready; that message.

    The channel's conversation refuses anything else in between (ProtocolError).
    """
    while True:
        msg, _ = chan.recv()  # only a Reply may carry fds, and init receives none
        if isinstance(msg, BackendReady):
            return msg
        reply, out_fds = serve(msg)  # type: ignore[arg-type]  # the order table lets only calls through
        try:
            chan.send(reply, fds=out_fds)
        finally:
            for fd in out_fds:
                os.close(fd)
