"""Files netwrap opens on a user's behalf: outputs it writes, inputs it reads.

Run as root (rootful use, the OCI hook), netwrap must not be a way for one
user to reach another's files. So:

- an output (capture, flow log) is created with O_EXCL or, when it exists,
  taken only if fstat on the opened fd shows a regular file with one link;
  the last component is never followed (O_NOFOLLOW), and FIFOs and devices
  are never opened for writing (they are looked at through an O_PATH fd);
- the open runs with the rights of the user the file is for (`Identity`):
  a short-lived child drops to that user's ids, opens, and passes the fd
  back over a socketpair (SCM_RIGHTS), so the kernel's permission checks
  are that user's and the user's own symlinks reach nothing new;
- when root opens for itself, no symlink is followed out of a directory
  that someone other than root can write (`_locate`), and the checks above
  still hold.

Rootless, the caller is the user: the same opens run in-process.

Every refusal is a UsageError naming the flag, the file and why (exit 2
before anything starts).
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import stat
from typing import Callable, Iterable, Mapping

import attrs

from netwrap.errors import UsageError

# A symlink chain longer than this is refused, as the kernel does (ELOOP).
_MAX_LINKS = 40
# Largest input read on a user's behalf (a hosts file): 16 MiB.
MAX_INPUT = 16 << 20


@attrs.frozen(kw_only=True)
class Identity:
    """The user a file is opened for, by host ids."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@attrs.frozen(kw_only=True)
class OutputFile:
    """An output opened for writing: `created` when this run made it."""

    path: str
    fd: int
    created: bool


class _Refused(Exception):
    """A file netwrap will not use, with the reason in words."""


def output_identity(user: Identity | None, environ: Mapping[str, str] | None = None) -> Identity | None:
    """Whom root writes outputs for: --user, else the sudo caller, else root itself (None).

    Rootless there is no one else to be: None.
    """
    if os.geteuid() != 0:
        return None
    if user is not None:
        return user
    env = os.environ if environ is None else environ
    try:
        uid, gid = int(env["SUDO_UID"]), int(env["SUDO_GID"])
    except (KeyError, ValueError):
        return None
    if uid == 0:
        return None
    return Identity(uid=uid, gid=gid, groups=_groups_of(uid, gid))


def input_identity(user: Identity | None) -> Identity | None:
    """Whose rights an input for the command is read with: the command's (--user), else None."""
    return user if os.geteuid() == 0 else None


def _groups_of(uid: int, gid: int) -> tuple[int, ...]:
    import pwd

    try:
        return tuple(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        return (gid,)


# ---------------------------------------------------------------- outputs

def open_output(path: str, *, flag: str, identity: Identity | None) -> OutputFile:
    """Open `path` for writing without following its last component; UsageError if refused.

    A new file is created (mode 0644 less the umask); an existing one is
    kept as it is: the caller truncates it once it holds any lock it needs.
    """
    if not path:
        raise UsageError(f"{flag}: empty path")
    fds, created = _run(identity, lambda: _open_output_here(path), flag=flag, path=path)
    return OutputFile(path=path, fd=fds[0], created=created == b"1")


def _open_output_here(path: str) -> tuple[list[int], bytes]:
    try:
        dirfd, name = _locate(path, follow_last=False)
    except FileNotFoundError:
        raise _Refused(f"directory {os.path.dirname(os.path.abspath(path))} does not exist") from None
    try:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY,
                         0o644, dir_fd=dirfd)
            return [fd], b"1"
        except FileExistsError:
            pass
        except FileNotFoundError:
            raise _Refused(f"directory {os.path.dirname(os.path.abspath(path))} does not exist") from None
        # It exists: look at it without opening it for I/O (opening a FIFO
        # blocks, opening a device may act on it), then reopen that inode.
        probe = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
        try:
            _check_output(os.fstat(probe))
            fd = os.open(f"/proc/self/fd/{probe}", os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
        finally:
            os.close(probe)
        try:
            _check_output(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return [fd], b"0"
    finally:
        if dirfd is not None:
            os.close(dirfd)


def _check_output(st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise _Refused("is a symbolic link (not followed for an output)")
    if stat.S_ISDIR(st.st_mode):
        raise _Refused("is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise _Refused(f"not a regular file (a {_kind(st.st_mode)})")
    if st.st_nlink != 1:
        raise _Refused(f"has {st.st_nlink} hard links (an output must have only its own name)")


def discard(outputs: Iterable[OutputFile], *, identity: Identity | None) -> None:
    """Close the outputs, and remove those this run created (a refused run leaves nothing)."""
    for out in outputs:
        if out.created:
            st = os.fstat(out.fd)
            try:
                _run(identity, lambda: _unlink_if(out.path, st.st_dev, st.st_ino), flag="", path=out.path)
            except UsageError:
                pass  # it moved or cannot be reached: not ours to remove then
        os.close(out.fd)


def _unlink_if(path: str, dev: int, ino: int) -> tuple[list[int], bytes]:
    dirfd, name = _locate(path, follow_last=False)
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) == (dev, ino):
            os.unlink(name, dir_fd=dirfd)
        return [], b""
    finally:
        if dirfd is not None:
            os.close(dirfd)


# ---------------------------------------------------------------- inputs

def read_input(path: str, *, flag: str, identity: Identity | None) -> bytes:
    """The bytes of a regular file read with `identity`'s rights; UsageError if refused."""
    fds, _ = _run(identity, lambda: _open_input_here(path), flag=flag, path=path)
    with os.fdopen(fds[0], "rb") as f:
        data = f.read(MAX_INPUT + 1)
    if len(data) > MAX_INPUT:
        raise UsageError(f"{flag} {path!r}: larger than {MAX_INPUT >> 20} MiB")
    return data


def _open_input_here(path: str) -> tuple[list[int], bytes]:
    dirfd, name = _locate(path, follow_last=True)
    try:
        # O_NONBLOCK: a FIFO must not hang the open; it is refused below.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
                     | (os.O_NOFOLLOW if dirfd is not None else 0), dir_fd=dirfd)
    finally:
        if dirfd is not None:
            os.close(dirfd)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _Refused("is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"not a regular file (a {_kind(st.st_mode)})")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return [fd], b""


# ---------------------------------------------------------------- path walk

def _locate(path: str, *, follow_last: bool) -> tuple[int | None, str]:
    """(directory fd, name) to open `path` from; (None, path) when not root.

    As root, each symlink on the way is followed only if it sits in a
    directory that only root can change (owned by root and not writable by
    group or others, or sticky with the link owned by root): any other
    link could have been placed, or swapped in, by another user. Walking
    with O_PATH directory fds means a directory renamed or replaced
    after it was checked is not looked up again by name.
    """
    if os.geteuid() != 0:
        return None, path
    todo = collections.deque(path.split("/"))
    cur = os.open("/" if path.startswith("/") else ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    links = 0
    try:
        while True:
            while todo and todo[0] in ("", "."):
                todo.popleft()
            if not todo:
                raise _Refused("is a directory")
            name = todo.popleft()
            last = not any(part not in ("", ".") for part in todo)
            if last and not follow_last:
                found, cur = cur, -1
                return found, name
            try:
                nxt = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            except FileNotFoundError:
                if last:
                    found, cur = cur, -1
                    return found, name
                raise
            st = os.fstat(nxt)
            if stat.S_ISLNK(st.st_mode):
                os.close(nxt)
                if not _trusted_link(os.fstat(cur), st):
                    raise _Refused(f"the path goes through the symbolic link {name!r} in a directory "
                                   "that users other than root can change")
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink(name, dir_fd=cur)
                if target.startswith("/"):
                    os.close(cur)
                    cur = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                todo.extendleft(reversed(target.split("/")))
                continue
            if last:
                os.close(nxt)
                found, cur = cur, -1
                return found, name
            if not stat.S_ISDIR(st.st_mode):
                os.close(nxt)
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            os.close(cur)
            cur = nxt
    finally:
        if cur >= 0:
            os.close(cur)


def _trusted_link(directory: os.stat_result, link: os.stat_result) -> bool:
    if directory.st_uid != 0:
        return False
    if not directory.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return True
    # Sticky (like /tmp): only the link's owner, the directory's or root may replace it.
    return bool(directory.st_mode & stat.S_ISVTX) and link.st_uid == 0


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


# ---------------------------------------------------------------- identity

def _run(identity: Identity | None, job: Callable[[], tuple[list[int], bytes]], *, flag: str,
         path: str) -> tuple[list[int], bytes]:
    """Run `job` here (no identity) or in a child with `identity`'s ids; its fds come back."""
    if identity is None:
        try:
            return job()
        except _Refused as exc:
            raise UsageError(f"{flag} {path!r}: {exc}") from None
        except OSError as exc:
            raise UsageError(f"{flag} {path!r}: {exc.strerror or exc}") from None
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - measured through the parent's result
        status = 0
        try:
            ours.close()
            os.setgroups(list(identity.groups or (identity.gid,)))
            os.setresgid(identity.gid, identity.gid, identity.gid)
            os.setresuid(identity.uid, identity.uid, identity.uid)
            fds, result = job()
            socket.send_fds(theirs, [b"o" + result], fds)
        except _Refused as exc:
            theirs.send(b"r" + str(exc).encode())
        except OSError as exc:
            theirs.send(b"e" + (exc.strerror or str(exc)).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    theirs.close()
    try:
        msg, fds, _flags, _addr = socket.recv_fds(ours, 65536, 4)
    finally:
        ours.close()
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    if msg[:1] == b"o":
        return fds, msg[1:]
    for fd in fds:
        os.close(fd)
    reason = msg[1:].decode(errors="replace") if msg[:1] in (b"r", b"e") else "could not be opened"
    raise UsageError(f"{flag} {path!r}: {reason}")
