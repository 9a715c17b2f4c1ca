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
from typing import Any

from netwrap.sandbox.channel import Channel, ChannelClosed, SandboxError
from netwrap.errors import NetwrapError

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

    def _call(self, call: str, **fields: Any) -> tuple[dict, list[int]]:
        try:
            self._chan.send("call", call=call, **fields)
            msg, fds = self._chan.recv()
        except (OSError, ChannelClosed):
            raise NetwrapError(f"the sandbox ended during setup ({call})") from None
        if msg.get("op") == "error":  # init could not go on at all
            raise NetwrapError(msg.get("message", "sandbox setup failed"))
        if msg.get("op") != "reply":
            raise NetwrapError(f"protocol error: expected a reply to {call}, got {msg.get('op')!r}")
        if msg.get("error"):
            for fd in fds:
                os.close(fd)
            raise NetwrapError(f"in the sandbox, {call} failed: {msg['error']}")
        return msg, fds

    def socket(self, family: int, type: int, proto: int = 0, *, bind: tuple | None = None,
               listen: int | None = None, options: list[tuple[int, int, int]] = ()) -> socket.socket:
        _, fds = self._call("socket", family=int(family), type=int(type), proto=proto,
                            bind=list(bind) if bind is not None else None, listen=listen,
                            options=[list(o) for o in options])
        return socket.socket(fileno=fds[0])

    def tun(self, name: str, flags: int, *, offload: int | None = None, vnet_hdr_size: int | None = None) -> tuple[int, str]:
        msg, fds = self._call("tun", name=name, flags=flags, offload=offload, vnet_hdr_size=vnet_hdr_size)
        return fds[0], msg["name"]

    def run(self, argv: list[str], *, input: str | None = None, check: bool = True) -> dict:
        msg, _ = self._call("run", argv=list(argv), input=input, check=check)
        return msg

    def write(self, path: str, data: str) -> None:
        self._call("write", path=path, data=data)


# --- init's end ---------------------------------------------------------------------------

def serve(msg: dict) -> tuple[dict, list[int]]:
    """Perform one call inside the sandbox: (reply fields, fds to send)."""
    call = msg.get("call")
    try:
        if call == "socket":
            return _socket(msg)
        if call == "tun":
            return _tun(msg)
        if call == "run":
            return _run(msg)
        if call == "write":
            with open(msg["path"], "w") as f:
                f.write(msg["data"])
            return {}, []
        return {"error": f"unknown call {call!r}"}, []
    except (OSError, NetwrapError, KeyError, ValueError, TypeError) as exc:
        return {"error": str(exc)}, []


def _socket(msg: dict) -> tuple[dict, list[int]]:
    s = socket.socket(msg["family"], msg["type"], msg.get("proto") or 0)
    try:
        for level, name, value in msg.get("options") or ():
            s.setsockopt(level, name, value)
        if msg.get("bind") is not None:
            s.bind(tuple(msg["bind"]))
        if msg.get("listen") is not None:
            s.listen(msg["listen"])
        return {}, [s.detach()]
    except BaseException:
        s.close()
        raise


def _tun(msg: dict) -> tuple[dict, list[int]]:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = struct.pack("16sH22x", msg["name"].encode(), msg["flags"])
        name = struct.unpack("16sH22x", fcntl.ioctl(fd, TUNSETIFF, ifr))[0].rstrip(b"\0").decode()
        if msg.get("vnet_hdr_size") is not None:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", msg["vnet_hdr_size"]))
        if msg.get("offload") is not None:
            fcntl.ioctl(fd, TUNSETOFFLOAD, msg["offload"])
        return {"name": name}, [fd]
    except BaseException:
        os.close(fd)
        raise


def _run(msg: dict) -> tuple[dict, list[int]]:
    from netwrap.linux.commands import run

    done = run(msg["argv"], input=msg.get("input"), check=bool(msg.get("check", True)))
    return {"status": done.status, "stdout": done.stdout, "stderr": done.stderr}, []


def serve_until(chan: Channel, op: str) -> dict:
    """Init: answer calls until the parent sends `op`; return that message."""
    while True:
        msg, fds = chan.recv()
        for fd in fds:
            os.close(fd)
        if msg.get("op") == "call":
            reply, out_fds = serve(msg)
            try:
                chan.send("reply", fds=out_fds, **reply)
            finally:
                for fd in out_fds:
                    os.close(fd)
            continue
        if msg.get("op") == op:
            return msg
        raise SandboxError(f"protocol error: expected {op!r} or a call, got {msg.get('op')!r}")
