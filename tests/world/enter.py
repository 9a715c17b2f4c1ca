"""enter.py: run a command "in the host" (or any namespace of the world).

    python -I enter.py --netns /run/netns/nwh123 [--etc DIR] [--user NAME]
                   [--cwd DIR] [--setenv K=V ...] [--die-with-parent] -- CMD...

Run as root.  In order: join the network namespace; unshare a mount namespace
and make every mount private (nothing we mount reaches the real system); with
--etc, mount a read-only overlayfs over /etc whose top layer is DIR (it holds
the symlinked resolv.conf) and whose lower layer is the real /etc, read
through; mount a fresh sysfs so /sys/class/net shows this namespace; drop to
--user (supplementary groups, gid, uid); build a clean environment; reset all
signal dispositions and the signal mask (Python ignores SIGPIPE and exec keeps
ignored signals); exec.

It never creates a session or process group, so terminal tests keep the
caller's foreground process group, and the pid the caller holds is the
command's pid.  stdlib only; no imports from the package (it runs as a file).
Its own failures exit with 120 and a line starting "world-enter:".
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
EXIT_LAUNCHER = 120
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


class LaunchError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    enc = lambda value: value.encode() if value is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {fstype or ''} on {target}")


def parse(argv: list[str]) -> dict:
    options: dict = {"netns": None, "etc": None, "user": None, "cwd": None, "setenv": [], "die_with_parent": False}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            break
        if arg == "--die-with-parent":
            options["die_with_parent"] = True
            continue
        key = arg[2:].replace("-", "_")
        if not arg.startswith("--") or key not in options or not args:
            raise LaunchError(f"bad argument {arg!r}")
        if key == "setenv":
            options["setenv"].append(args.pop(0))
        else:
            options[key] = args.pop(0)
    else:
        raise LaunchError("missing '--' before the command")
    if not args:
        raise LaunchError("no command")
    if not options["netns"]:
        raise LaunchError("--netns is required")
    options["argv"] = args
    return options


def enter_namespaces(netns: str, etc_top: str | None) -> None:
    fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns {netns}")
    finally:
        os.close(fd)
    _check(_libc.unshare(CLONE_NEWNS), "unshare mount namespace")
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    if etc_top:
        # Only lower layers: a read-only overlay, so concurrent launches can
        # share the layers (an upper dir may serve one mount only).
        _mount("overlay", "/etc", "overlay", MS_RDONLY, f"lowerdir={etc_top}:/etc")
    # sysfs shows the network namespace of whoever mounted it: remount.
    _libc.umount2(b"/sys", MNT_DETACH)  # may not be a mount point; that's fine
    _mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)


def clean_env(user: pwd.struct_passwd, extra: list[str]) -> dict[str, str]:
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "SHELL": user.pw_shell or "/bin/sh",
        "LANG": "C.UTF-8",
    }
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LaunchError(f"--setenv wants KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def drop_to(user: pwd.struct_passwd) -> None:
    os.setgroups(os.getgrouplist(user.pw_name, user.pw_gid))
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    if os.getuid() != user.pw_uid or os.geteuid() != user.pw_uid:
        raise LaunchError(f"could not become {user.pw_name}")


def reset_signals() -> None:
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass  # signals glibc reserves for itself
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def main(argv: list[str]) -> int:
    parent = os.getppid()
    try:
        options = parse(argv)
        user = pwd.getpwnam(options["user"]) if options["user"] else pwd.getpwuid(0)
        env = clean_env(user, options["setenv"])
        enter_namespaces(options["netns"], options["etc"])
        if options["user"]:
            drop_to(user)
        if options["die_with_parent"]:
            # After the uid change: changing credentials clears the death signal.
            _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl PDEATHSIG")
            if os.getppid() != parent:
                return EXIT_LAUNCHER  # the parent died before the signal was armed
        if options["cwd"]:
            os.chdir(options["cwd"])
        else:
            try:
                os.chdir(env.get("HOME") or "/")
            except OSError:
                os.chdir("/")  # e.g. a home of /nonexistent: start where login would
    except (LaunchError, OSError, KeyError) as error:
        print(f"world-enter: {error}", file=sys.stderr, flush=True)
        return EXIT_LAUNCHER
    reset_signals()
    command = options["argv"]
    try:
        os.execvpe(command[0], command, env)
    except OSError as error:
        print(f"world-enter: {command[0]}: {error.strerror}", file=sys.stderr, flush=True)
        return 127 if isinstance(error, FileNotFoundError) else 126
    return EXIT_LAUNCHER  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
