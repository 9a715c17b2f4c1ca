"""Thin ctypes wrappers for the Linux calls the stdlib (3.10/3.11) lacks.

unshare, prctl, mount, signalfd and interface flags. Each wrapper raises
OSError with errno set, like the os module does, so callers handle one kind
of error.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os
import signal
import socket
import struct
from typing import Iterable

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

PR_SET_PDEATHSIG = 1
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# linux/securebits.h
SECBIT_NOROOT = 1 << 0
SECBIT_NOROOT_LOCKED = 1 << 1
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECBIT_NO_SETUID_FIXUP_LOCKED = 1 << 3
SECBIT_KEEP_CAPS = 1 << 4
SECBIT_KEEP_CAPS_LOCKED = 1 << 5
SECBIT_NO_CAP_AMBIENT_RAISE = 1 << 6
SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED = 1 << 7

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

SFD_CLOEXEC = 0o2000000
SI_USER = 0
SI_KERNEL = 0x80

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    """Join the namespace open at fd (os.setns from Python 3.12 on)."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), "prctl")


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    prctl(PR_SET_PDEATHSIG, int(sig))


def prctl_get(option: int, arg: int = 0) -> int:
    """A prctl that answers through its return value (PR_GET_*, PR_CAPBSET_READ)."""
    return _check(_libc.prctl(option, arg, 0, 0, 0), "prctl")


def set_no_new_privs() -> None:
    """No exec from here on gains privilege: setuid/setgid bits and file capabilities are ignored."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def clear_ambient_capabilities() -> None:
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)


def set_securebits(bits: int) -> None:
    prctl(PR_SET_SECUREBITS, bits)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def clear_inheritable_capabilities() -> None:
    """Empty the inheritable set, keeping effective and permitted.

    The bounding set does not limit what inheritable capabilities pass to
    a program whose file has inheritable capabilities; this does.
    """
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    for half in data:
        half.inheritable = 0
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


# --- signalfd: lets one select() loop see signals with their sender and code ---

class _SigsetT(ctypes.Structure):
    _fields_ = [("val", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong))))]


_SIGINFO = struct.Struct("=IiiIIiIIIIIiIIII")  # first fields of signalfd_siginfo
SIGNALFD_SIGINFO_SIZE = 128


def signalfd(signals: Iterable[int]) -> int:
    """A CLOEXEC signalfd for `signals` (which the caller must block)."""
    mask = _SigsetT()
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    for sig in signals:
        mask.val[(sig - 1) // bits] |= 1 << ((sig - 1) % bits)
    return _check(_libc.signalfd(-1, ctypes.byref(mask), SFD_CLOEXEC), "signalfd")


def read_signalfd(fd: int) -> tuple[int, int, int]:
    """Read one queued signal: (signo, code, sender pid)."""
    data = os.read(fd, SIGNALFD_SIGINFO_SIZE)
    signo, _err, code, pid = _SIGINFO.unpack_from(data)[:4]
    return signo, code, pid


def drain_signalfd(fd: int) -> None:
    """Discard the signals queued on a signalfd (read until it would block)."""
    os.set_blocking(fd, False)
    try:
        while os.read(fd, SIGNALFD_SIGINFO_SIZE):
            pass
    except BlockingIOError:
        pass


# --- interface flags through ioctl: bringing lo up needs no netlink library ---

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def set_link_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))


def signal_if_alive(pid: int, sig: int) -> None:
    """os.kill, where a process already gone is not an error (it ended on its own)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def reset_signals_for_exec() -> None:
    """Give an exec'd program default dispositions and an empty mask.

    Python ignores SIGPIPE and exec keeps ignored signals; a blocked mask is
    kept too. Programs expect neither (pasta refuses to start, `yes | head`
    would see EPIPE instead of dying).
    """
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass  # real-time signals Python reserves, or invalid numbers
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def errno_name(err: int) -> str:
    return _errno.errorcode.get(err, str(err))
