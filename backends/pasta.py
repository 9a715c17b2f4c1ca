"""pasta (passt project): a user-mode network stack attached to the sandbox.

Rootless it attaches by PID (it joins the sandbox's user and network
namespaces). Rootful it is handed an open netns fd and told to stay root: a
root pasta drops capabilities (and otherwise switches to "nobody") before it
opens the namespace, and then may no longer open /proc/PID/ns/net; staying
root also keeps its parent-death signal.

Readiness: pasta writes its pid file only once the namespace's addresses and
routes are configured. The pid file is a FIFO we hold open for reading, so
"ready" is a readable fd, not a poll; pasta dying first shows up as EOF on its
output pipe.

Host loopback: pasta maps its gateway address to the host's loopback and
forwards namespace-loopback ports to the host (-T/-U auto). Both are off
unless the user asks for --allow-host-loopback.
"""

from __future__ import annotations

import collections
import os
import select
import signal
import time

from netwrap.backends import (
    CAP_HOST_LOOPBACK, CAP_ICMP, CAP_IPV4, CAP_IPV6, CAP_OUTBOUND_INTERFACE, CAP_PUBLISH, CAP_TCP, CAP_UDP,
    NetworkInfo, Probe, Target,
)
from netwrap.backends.probing import package_version, probe_binary
from netwrap.errors import NetwrapError
from netwrap.external import CommandError, spawn_helper, wait_pid, which
from netwrap.scratch import make_private_dir, remove_private_dir

# The sandbox's resolver: pasta answers DNS sent here by forwarding it to the
# host's first resolver, also one on the host's loopback (127.0.0.53).
DNS_FORWARD_V4 = "169.254.0.53"

# Options every build we support has; a missing one is named in the error.
REQUIRED_OPTIONS = ("foreground", "config-net", "pid", "tcp-ports", "udp-ports", "tcp-ns", "udp-ns")


class PastaBackend:
    name = "pasta"
    package = "passt"
    capabilities = frozenset({
        CAP_IPV4, CAP_IPV6, CAP_TCP, CAP_UDP, CAP_ICMP, CAP_PUBLISH, CAP_OUTBOUND_INTERFACE, CAP_HOST_LOOPBACK,
    })

    def probe(self) -> Probe:
        path = which("pasta")
        fix = f"install the '{self.package}' package (e.g. apt-get install {self.package})"
        if path is None:
            return Probe(available=False, reason="pasta not found in PATH", fix=fix)
        info = probe_binary("pasta", path, version_argv=[path, "--version"], help_argv=[path, "--help"],
                            fallback_version=lambda: _packaged_version(self.package))
        options = frozenset(info["options"])  # type: ignore[arg-type]
        version = info["version"]
        missing = [o for o in REQUIRED_OPTIONS if o not in options]
        if not ({"no-map-gw", "map-host-loopback"} & options):
            missing.append("no-map-gw")
        if missing:
            return Probe(
                available=False, path=path, version=version, options=options,
                reason=f"{path} lacks option(s) {', '.join('--' + m for m in missing)}",
                fix=f"install a newer '{self.package}' package",
            )
        return Probe(available=True, path=path, version=version, options=options)

    def start(self, target: Target, config, probe: Probe | None = None) -> "PastaHandle":
        probe = probe or self.probe()
        pass_fds = [target.netns_fd] if target.rootful else []
        return PastaHandle.start(self.argv(target, config, probe, pidfile="{pidfile}"), pass_fds)

    def argv(self, target: Target, config, probe: Probe, *, pidfile: str) -> list[str]:
        argv = [probe.path or "pasta", "--foreground", "--config-net", "--pid", pidfile]
        if config.verbosity <= 0:
            argv.append("--quiet")
        # Nothing from the host into the sandbox until ports are published.
        argv += ["--tcp-ports", "none", "--udp-ports", "none"]
        if config.allow_host_loopback:
            argv += ["--tcp-ns", "auto", "--udp-ns", "auto"]
        else:
            argv += ["--tcp-ns", "none", "--udp-ns", "none"]
            argv += ["--no-map-gw"] if "no-map-gw" in probe.options else ["--map-host-loopback", "none"]
        if "dns-forward" in probe.options:
            argv += ["--dns-forward", DNS_FORWARD_V4]
        if target.rootful:
            argv += ["--runas", "0:0", "--netns", f"/proc/self/fd/{target.netns_fd}"]
        else:
            argv.append(str(target.pid))
        return argv


def _packaged_version(package: str) -> str | None:
    version = package_version(package)
    return f"{version} (distribution package)" if version else None


class PastaHandle:
    """A running pasta, owned by the netwrap parent."""

    def __init__(self, *, pid: int, output_fd: int, fifo_fd: int, workdir: str, argv: list[str]) -> None:
        self.pid: int | None = pid
        self.argv = argv
        self._output_fd: int | None = output_fd
        self._fifo_fd: int | None = fifo_fd
        self._workdir = workdir
        self._output: collections.deque[bytes] = collections.deque(maxlen=64)
        self._status: int | None = None

    @classmethod
    def start(cls, argv_template: list[str], pass_fds: list[int]) -> "PastaHandle":
        workdir = make_private_dir("pasta")
        try:
            fifo = os.path.join(workdir, "pid")
            os.mkfifo(fifo, 0o600)
            fifo_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            argv = [fifo if a == "{pidfile}" else a for a in argv_template]
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            try:
                pid = spawn_helper(argv, output_fd=out_w, pass_fds=pass_fds)
            finally:
                os.close(out_w)
        except CommandError as exc:
            remove_private_dir(workdir)
            raise NetwrapError(f"could not start pasta: {exc}") from None
        except BaseException:
            remove_private_dir(workdir)
            raise
        os.set_blocking(out_r, False)
        return cls(pid=pid, output_fd=out_r, fifo_fd=fifo_fd, workdir=workdir, argv=argv)

    def wait_ready(self, timeout: float) -> NetworkInfo:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise NetwrapError(f"pasta did not become ready within {timeout:g} s{self._tail()}")
            fds = [fd for fd in (self._fifo_fd, self._output_fd) if fd is not None]
            readable, _, _ = select.select(fds, [], [], remaining)
            if self._output_fd in readable:
                self.on_readable()
            if self._fifo_fd in readable:
                if os.read(self._fifo_fd, 64).strip():
                    self._close_fifo()
                    return NetworkInfo(dns=(DNS_FORWARD_V4,) if "--dns-forward" in self.argv else ())
            if self._output_fd is None:  # EOF: pasta is gone
                status = self._reap(block=True)
                raise NetwrapError(f"pasta exited ({_describe(status)}) before it was ready{self._tail()}")

    def fileno(self) -> int | None:
        return self._output_fd

    def on_readable(self) -> None:
        """Drain pasta's output so it never blocks on a full pipe."""
        if self._output_fd is None:
            return
        try:
            while True:
                chunk = os.read(self._output_fd, 65536)
                if not chunk:
                    os.close(self._output_fd)
                    self._output_fd = None
                    return
                self._output.append(chunk)
        except BlockingIOError:
            return

    def poll(self) -> int | None:
        return self._reap(block=False)

    def diagnostics(self) -> str:
        text = b"".join(self._output).decode(errors="replace")
        return "\n".join(line for line in text.splitlines() if "to syslog" not in line and line.strip())

    def stop(self, timeout: float = 2.0) -> None:
        if self.pid is not None and self._reap(block=False) is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            status = wait_pid(self.pid, timeout)
            if status is not None:
                self._status = status
            else:
                os.kill(self.pid, signal.SIGKILL)
                self._reap(block=True)
        self.on_readable()
        if self._output_fd is not None:
            os.close(self._output_fd)
            self._output_fd = None
        self._close_fifo()
        remove_private_dir(self._workdir)

    def _close_fifo(self) -> None:
        if self._fifo_fd is not None:
            os.close(self._fifo_fd)
            self._fifo_fd = None

    def _reap(self, *, block: bool) -> int | None:
        if self._status is None and self.pid is not None:
            try:
                pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self._status = status
        return self._status

    def _tail(self) -> str:
        text = self.diagnostics()
        return f": {text.splitlines()[-1]}" if text else ""


def _describe(status: int | None) -> str:
    if status is None:
        return "still running"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
