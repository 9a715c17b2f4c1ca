"""What runs inside the sandbox, from fork to the command's exec.

Three processes, each forked from the one before:

holder  host PID namespace; creates the user (rootless), network, mount and
        PID namespaces, reports its pid (the backend attaches to it) and the
        init's pid, then waits for init and exits with its status. Dies with
        netwrap (PDEATHSIG), taking init, and so the whole tree, with it.
init    pid 1 of the new PID namespace; mounts /proc, does the front-end
        setup as root of the namespaces, forks the command, forwards signals
        to it, reaps orphans, and when the command ends ends everything left.
command the user's program: in a nested user namespace that maps the
        caller's ids to the outer root (so it holds no capability over the
        network namespace), or as root of the outer one with --as-root.

None of these return into netwrap's main code: they end in os._exit or exec.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import sys
import traceback

from netwrap.sandbox import setup
from netwrap.linux import syscalls
from netwrap.sandbox import calls
from netwrap.config import Config
from netwrap.errors import NetwrapError
from netwrap.sandbox.channel import Channel, ChannelClosed
from netwrap.sandbox.messages import Conversation, Exited, Failed, NsReady, Started

# Signals netwrap passes on to the command when someone sends them to it.
FORWARDED = (
    signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM,
    signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGCONT,
)
# Signals the terminal sends to the whole foreground process group; the
# command gets them directly, so the sandbox's own processes ignore them.
TERMINAL = (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP)

EXIT_SETUP_FAILED = 125


def exit_code(status: int) -> int:
    """A wait status as a shell reports it: the code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _fail(chan: Channel, message: str) -> None:
    try:
        chan.send(Failed(message=message))
    except (OSError, NetwrapError):  # gone, or failed already
        pass
    os._exit(EXIT_SETUP_FAILED)


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def holder_main(config: Config, chan: Channel, netwrap_pid: int) -> None:
    try:
        for sig in TERMINAL:
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        syscalls.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != netwrap_pid:
            os._exit(EXIT_SETUP_FAILED)
        flags = syscalls.CLONE_NEWNET | syscalls.CLONE_NEWNS | syscalls.CLONE_NEWPID
        if not config.rootful:
            syscalls.unshare(syscalls.CLONE_NEWUSER)
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {config.caller_uid} 1")
            _write("/proc/self/gid_map", f"0 {config.caller_gid} 1")
        syscalls.unshare(flags)
        # Mounts made for the sandbox (proc, resolv.conf, hosts) must not
        # propagate back to the host.
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    except OSError as exc:
        _fail(chan, f"cannot create the sandbox's namespaces: {exc.strerror or exc}"
              + (" (are unprivileged user namespaces enabled? see 'netwrap doctor')"
                 if not config.rootful and exc.errno in (1, 22, 28) else ""))
    holder = os.getpid()
    init_pid = os.fork()
    if init_pid == 0:
        try:
            init_main(config, chan, holder)
        except BaseException:  # never let an init exception unwind into netwrap
            _fail(chan, "sandbox init failed: " + traceback.format_exc().strip().splitlines()[-1])
        os._exit(EXIT_SETUP_FAILED)
    chan.send(NsReady(holder_pid=holder, init_pid=init_pid))
    chan.close()
    while True:
        try:
            _, status = os.waitpid(init_pid, 0)
            break
        except InterruptedError:
            continue
    os._exit(exit_code(status))


def init_main(config: Config, chan: Channel, holder_pid: int) -> None:
    # getppid() is 0 here (the holder is outside this PID namespace), so a
    # holder that died before this line is noticed through the channel:
    # netwrap then closes it and the wait for "backend-ready" ends.
    syscalls.set_pdeathsig(signal.SIGKILL)
    chan.conversation = Conversation.for_init()
    # The holder ignored the terminal's signals; init takes the forwarded
    # ones through a signalfd (blocked signals still reach a pid 1).
    signal.pthread_sigmask(signal.SIG_BLOCK, [*FORWARDED, signal.SIGCHLD])
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    sigfd = syscalls.signalfd([*FORWARDED, signal.SIGCHLD])
    try:
        # A /proc that shows this PID namespace; the host's stays underneath.
        syscalls.mount("proc", "/proc", "proc", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    except OSError as exc:
        _fail(chan, f"cannot mount /proc in the sandbox: {exc.strerror}")

    try:
        # Until the backend is ready, the parent may ask init to act in here
        # (open a TUN, create listeners, run nft): see netwrap.sandbox.calls.
        ready = calls.serve_until_ready(chan)
    except ChannelClosed:
        os._exit(EXIT_SETUP_FAILED)
    try:
        syscalls.set_link_up("lo")
    except OSError as exc:
        _fail(chan, f"cannot bring up the sandbox's loopback: {exc.strerror}")
    try:
        setup.apply(ready.plan)
    except (OSError, NetwrapError) as exc:
        _fail(chan, f"sandbox setup failed: {exc}")

    command_pid = _start_command(config, chan)
    chan.send(Started(pid=command_pid))
    status = _supervise(chan, sigfd, command_pid)
    # Whatever the command left running ends with it (kill(-1) from pid 1
    # reaches every other process of this PID namespace).
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        chan.send(Exited(status=status))
    except OSError:
        pass
    os._exit(exit_code(status))


def _nest_user_namespace(config: Config) -> bool:
    """Whether the command gets a nested user namespace of its own."""
    if config.as_root or (config.rootful and config.user is not None):
        return False
    return True


def _start_command(config: Config, chan: Channel) -> int:
    nest = _nest_user_namespace(config)
    to_init_r, to_init_w = os.pipe2(os.O_CLOEXEC)
    to_cmd_r, to_cmd_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(to_init_r)
        os.close(to_cmd_w)
        _command_main(config, chan, nest, to_init_w, to_cmd_r)
    os.close(to_init_w)
    os.close(to_cmd_r)
    if nest:
        if os.read(to_init_r, 1) == b"u":
            # The command asked for its maps. Rootless: the caller's ids map
            # to the outer root (one id each). Rootful: identity, root stays
            # root for files but has no capability over the netns.
            if config.rootful:
                uid_map = gid_map = "0 0 4294967295"
            else:
                uid_map, gid_map = f"{config.caller_uid} 0 1", f"{config.caller_gid} 0 1"
            try:
                _write(f"/proc/{pid}/uid_map", uid_map)
                _write(f"/proc/{pid}/gid_map", gid_map)
                os.write(to_cmd_w, b"g")
            except OSError as exc:
                os.kill(pid, signal.SIGKILL)
                _fail(chan, f"cannot map ids for the command's user namespace: {exc.strerror}")
    else:
        os.write(to_cmd_w, b"g")
    os.close(to_init_r)
    os.close(to_cmd_w)
    return pid


# Securebits for a command that must hold no capability. NOROOT: exec by
# uid 0 or of a setuid-root program grants nothing. NO_SETUID_FIXUP is left
# off, so a uid change away from 0 still empties the capability sets;
# NO_CAP_AMBIENT_RAISE: no ambient capability can be raised again. Each is
# locked, for the whole tree: no process of it can change them back.
# KEEP_CAPS is not locked: with no capability it keeps nothing, and ping
# sets it (PR_SET_KEEPCAPS) and gives up when that fails.
COMMAND_SECUREBITS = (
    syscalls.SECBIT_NOROOT | syscalls.SECBIT_NOROOT_LOCKED
    | syscalls.SECBIT_NO_SETUID_FIXUP_LOCKED
    | syscalls.SECBIT_NO_CAP_AMBIENT_RAISE | syscalls.SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED
)


def _holds_nothing(config: Config) -> bool:
    """Whether the command must start without any capability, and never regain one.

    Rootless (nested under the caller's ids) and rootful --user: yes.
    --as-root keeps what it documents (root of the sandbox, with its
    capabilities); rootful without --user runs the command as root of a
    nested user namespace, whose capabilities reach no network object.
    """
    if config.as_root:
        return False
    return not config.rootful or config.user is not None


def _command_main(config: Config, chan: Channel, nest: bool, to_init_w: int, to_cmd_r: int) -> None:
    chan.close()
    try:
        if nest:
            syscalls.unshare(syscalls.CLONE_NEWUSER)
            os.write(to_init_w, b"u")
        if os.read(to_cmd_r, 1) != b"g":
            os._exit(EXIT_SETUP_FAILED)
        if _holds_nothing(config):
            # While still privileged (CAP_SETPCAP): nothing exec'd later, setuid
            # or file-capability programs included, can be given a capability.
            # The bounding set stays: the kernel refuses to exec a program whose
            # file capabilities (ping's cap_net_raw+ep on Debian) it cannot
            # grant in full, so an empty one breaks such programs, while
            # NO_NEW_PRIVS already lets them start with no capability at all.
            syscalls.clear_inheritable_capabilities()
            syscalls.set_securebits(COMMAND_SECUREBITS)
        syscalls.clear_ambient_capabilities()
        if config.user is not None:
            os.setgroups(list(config.user.groups))
            os.setgid(config.user.gid)
            os.setuid(config.user.uid)
        # In every mode: setuid bits and file capabilities are ignored by exec.
        syscalls.set_no_new_privs()
        os.close(to_init_w)
        os.close(to_cmd_r)
    except OSError as exc:
        sys.stderr.write(f"netwrap: cannot prepare the command: {exc.strerror}\n")
        os._exit(EXIT_SETUP_FAILED)
    syscalls.reset_signals_for_exec()
    _exec(list(config.command))


def _exec(argv: list[str]) -> None:
    """exec argv[0] the way a shell finds it: 127 if no such file, else 126.

    os.execvp would report EACCES from any unreadable PATH directory even
    when the program exists nowhere; shells say "not found" then.
    """
    name = argv[0]
    candidates = [name] if "/" in name else [os.path.join(d or ".", name) for d in os.get_exec_path()]
    error: OSError | None = None
    for path in candidates:
        try:
            os.execv(path, argv)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno == errno.EACCES and not os.path.isfile(path):
                continue  # an unreadable directory, not our program
            error = error or exc
    if error is None:
        sys.stderr.write(f"netwrap: {name}: command not found\n")
        sys.stderr.flush()
        os._exit(127)
    sys.stderr.write(f"netwrap: {name}: {error.strerror or error}\n")
    sys.stderr.flush()
    os._exit(126)


def _supervise(chan: Channel, sigfd: int, command_pid: int) -> int:
    """Forward signals and reap children until the command ends."""
    chan_open = True
    while True:
        fds = [sigfd] + ([chan.fileno()] if chan_open else [])
        try:
            readable, _, _ = select.select(fds, [], [])
        except InterruptedError:
            continue
        if chan_open and chan.fileno() in readable:
            try:
                # Watched only to see netwrap go: it sends nothing once the
                # command runs, so any message is refused (ProtocolError).
                chan.recv()
            except ChannelClosed:
                chan_open = False  # netwrap is going; PDEATHSIG follows
                continue
        if sigfd not in readable:
            continue
        signo, code, _sender = syscalls.read_signalfd(sigfd)
        if signo == signal.SIGCHLD:
            status = _reap(command_pid)
            if status is not None:
                return status
        elif code != syscalls.SI_KERNEL:
            # A terminal's signals went to the command's process group too;
            # only signals someone sent to us need passing on.
            syscalls.signal_if_alive(command_pid, signo)


def _reap(command_pid: int) -> int | None:
    """Reap every exited child; the command's wait status once it has ended."""
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == command_pid:
            found = status
