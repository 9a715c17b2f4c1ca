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

Addressing: the sandbox gets slirp4netns' and tunrelay's layout (10.0.2.100/24
via 10.0.2.2, fd00::100/64 via fd00::2, DNS at 10.0.2.3) rather than pasta's
default copy of the host's own address and gateway. A copied address shadows
the host: a connection to the host's address would stay inside the sandbox,
so a host service bound to 0.0.0.0 would be unreachable under pasta and
reachable under the other backends. 10.0.2.0/24 and fd00::/64 are what
slirp4netns uses; one picture for every backend.

Host loopback: pasta maps its gateway address to the host's loopback and
forwards namespace-loopback ports to the host (-T/-U auto). Both are off
unless the user asks for --allow-host-loopback. The host's other addresses
are reached like any peer's: pasta connects to them from the host.
"""

from __future__ import annotations

import contextlib
import os
import sys

from netwrap.backends import (
    CAP_HOST_LOOPBACK, CAP_ICMP, CAP_ICMP6, CAP_IPV4, CAP_IPV6, CAP_OUTBOUND_INTERFACE, CAP_PUBLISH,
    CAP_PUBLISH_IPV6, CAP_PUBLISH_KEEPS_PEER, CAP_PUBLISH_UDP, CAP_TCP, CAP_UDP, NetworkInfo, Probe, Target,
)
from netwrap.backends.helper_process import DelegatesToProcess, HelperProcess
from netwrap.backends.probing import package_version, probe_binary
from netwrap.config import Tools
from netwrap.errors import NetwrapError
from netwrap.linux.commands import searched, which
from netwrap.linux.hostfiles import read_host_file
from netwrap.linux.scratch import make_private_dir, remove_private_dir

# The sandbox's addresses: the same as slirp4netns and tunrelay (see above).
ADDRESS_V4, PREFIX_V4, GATEWAY_V4 = "10.0.2.100", 24, "10.0.2.2"
ADDRESS_V6, GATEWAY_V6 = "fd00::100", "fd00::2"

# The sandbox's resolver: pasta answers DNS sent here by forwarding it to the
# host's first resolver, also one on the host's loopback (127.0.0.53).
DNS_FORWARD_V4 = "10.0.2.3"

# Options every build we support has; a missing one is named in the error.
REQUIRED_OPTIONS = ("foreground", "config-net", "pid", "tcp-ports", "udp-ports", "tcp-ns", "udp-ns")


# A build that names this option (passt 2024_08 and later) also has the UDP
# flow table: the 2023 build delivers published datagrams but loses the
# server's replies (and leaks its listening socket into the command). With
# such a build netwrap relays published UDP itself (netwrap.backends.
# publish_relay, which needs nftables), keeping the client's address too.
UDP_PUBLISH_MARKER = "map-host-loopback"


class PastaBackend:
    name = "pasta"
    package = "passt"
    # -t keeps the client's address: the server inside sees the real peer.
    base_capabilities = frozenset({
        CAP_IPV4, CAP_IPV6, CAP_TCP, CAP_UDP, CAP_ICMP, CAP_ICMP6, CAP_PUBLISH, CAP_PUBLISH_IPV6, CAP_PUBLISH_KEEPS_PEER,
        CAP_OUTBOUND_INTERFACE, CAP_HOST_LOOPBACK,
    })

    def __init__(self) -> None:
        self._probe: Probe | None = None

    @property
    def capabilities(self) -> frozenset[str]:
        """What this machine's pasta can do; probed (cached) on first use."""
        probe = self._probe or self.probe()
        if UDP_PUBLISH_MARKER in probe.options or Tools.find().nft is not None:
            return self.base_capabilities | {CAP_PUBLISH_UDP}
        return self.base_capabilities

    def probe(self) -> Probe:
        self._probe = self._probe_now()
        return self._probe

    def _probe_now(self) -> Probe:
        path = which("pasta")
        fix = f"install the '{self.package}' package (e.g. apt-get install {self.package})"
        if path is None:
            return Probe(available=False, reason=f"pasta not found in {searched()}", fix=fix)
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
        if config.outbound_interface is not None and not config.dns and config.verbosity >= 0:
            problem = iface_dns_problem(read_host_file("/etc/resolv.conf"), config.outbound_interface.name)
            if problem:
                sys.stderr.write(f"netwrap: warning: {problem}\n")
        pass_fds = [target.netns_fd] if target.rootful else []
        handle = PastaHandle.start(self.argv(target, config, probe, pidfile="{pidfile}"), pass_fds)
        handle.relayed = [p for p in getattr(config, "publish", ()) if not pasta_publishes(p, probe)]
        handle.target = target
        handle.quiet = config.verbosity < 0
        return handle

    def argv(self, target: Target, config, probe: Probe, *, pidfile: str) -> list[str]:
        argv = [probe.path or "pasta", "--foreground", "--config-net", "--pid", pidfile]
        if config.verbosity <= 0:
            argv.append("--quiet")
        # Our own addresses, not copies of the host's (which would shadow it).
        argv += ["--address", ADDRESS_V4, "--netmask", str(PREFIX_V4), "--gateway", GATEWAY_V4,
                 "--address", ADDRESS_V6, "--gateway", GATEWAY_V6]
        # Nothing from the host into the sandbox but the ports published.
        for proto, option in (("tcp", "--tcp-ports"), ("udp", "--udp-ports")):
            specs = [port_spec(p) for p in getattr(config, "publish", ())
                     if p.proto == proto and pasta_publishes(p, probe)]
            for spec in specs or ["none"]:
                argv += [option, spec]
        if config.allow_host_loopback:
            argv += ["--tcp-ns", "auto", "--udp-ns", "auto"]
        else:
            argv += ["--tcp-ns", "none", "--udp-ns", "none"]
            argv += ["--no-map-gw"] if "no-map-gw" in probe.options else ["--map-host-loopback", "none"]
        if config.outbound_interface is not None:
            argv += outbound_options(config.outbound_interface.name, probe)
        if "dns-forward" in probe.options:
            argv += ["--dns-forward", DNS_FORWARD_V4]
        if target.rootful:
            argv += ["--runas", "0:0", "--netns", f"/proc/self/fd/{target.netns_fd}"]
        else:
            argv.append(str(target.pid))
        return argv


def outbound_options(name: str, probe: Probe) -> list[str]:
    """pasta binds its host sockets of each family to IFACE (SO_BINDTODEVICE).

    Both families, even when IFACE has no IPv6 address: bound there, the
    command's IPv6 finds no route and fails, rather than leave by another way.
    """
    missing = [o for o in ("outbound-if4", "outbound-if6") if o not in probe.options]
    if missing:
        raise NetwrapError(f"--iface needs pasta's {', '.join('--' + o for o in missing)}, which {probe.path} lacks; "
                           "install a newer 'passt' package")
    return ["--outbound-if4", name, "--outbound-if6", name]


def iface_dns_problem(resolv_conf_text: str, iface: str) -> str | None:
    """Why names will not resolve through pasta's DNS address under --iface; None if they will.

    pasta forwards the sandbox's DNS to the host's first resolver from a socket
    bound to IFACE; a resolver on the host's loopback (127.0.0.53, as with
    systemd-resolved) cannot be reached from there. A forced resolver (-d)
    is reached through IFACE like any peer.
    """
    import ipaddress

    from netwrap.backends.tunrelay.addressing import host_resolvers

    first = next((r for r in host_resolvers(resolv_conf_text) if ":" not in r), None)
    if first is None or not ipaddress.ip_address(first).is_loopback:
        return None
    return (f"--iface {iface}: pasta cannot reach the host's resolver {first} on its loopback from {iface}, "
            f"so names will not resolve; give -d RESOLVER to send DNS out by {iface} too")


def pasta_publishes(published, probe: Probe) -> bool:
    """Whether pasta itself forwards this --publish (else netwrap relays it: old builds' UDP)."""
    return published.proto == "tcp" or UDP_PUBLISH_MARKER in probe.options


def port_spec(published) -> str:
    """pasta's -t/-u SPEC for one --publish: [ADDRESS/]HOST_PORT:SANDBOX_PORT."""
    address = f"{published.host_ip}/" if published.host_ip is not None else ""
    return f"{address}{published.host_port}:{published.sandbox_port}"


def _packaged_version(package: str) -> str | None:
    version = package_version(package)
    return f"{version} (distribution package)" if version else None


class PastaHandle(DelegatesToProcess):
    """A running pasta, owned by the netwrap parent."""

    def __init__(self, *, process: HelperProcess, fifo_fd: int, workdir: str) -> None:
        self.process = process
        self.pid = process.pid
        self.argv = process.argv
        self._fifo_fd: int | None = fifo_fd
        self._workdir = workdir
        # --publish that netwrap relays itself (set by PastaBackend.start), and what that holds.
        self.relayed: list = []
        self.target: Target | None = None
        self.quiet = False
        self._stack = contextlib.ExitStack()

    @classmethod
    def start(cls, argv_template: list[str], pass_fds: list[int]) -> "PastaHandle":
        workdir = make_private_dir("pasta")
        try:
            fifo = os.path.join(workdir, "pid")
            os.mkfifo(fifo, 0o600)
            fifo_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                argv = [fifo if a == "{pidfile}" else a for a in argv_template]
                process = HelperProcess("pasta", argv, pass_fds=pass_fds, is_diagnostic=_is_diagnostic)
            except BaseException:
                os.close(fifo_fd)
                raise
        except BaseException:
            remove_private_dir(workdir)
            raise
        return cls(process=process, fifo_fd=fifo_fd, workdir=workdir)

    def wait_ready(self, timeout: float) -> NetworkInfo:
        try:
            self.process.wait_ready(self._fifo_fd, timeout)
        except NetwrapError:
            self.stop()
            raise
        self._close_fifo()
        # The pid FIFO has done its job: nothing of ours is left on
        # disk for the rest of the run, even if netwrap is SIGKILLed.
        remove_private_dir(self._workdir)
        if self.relayed:
            try:
                self._relay(self.relayed)
            except BaseException:
                self.stop()
                raise
        return NetworkInfo(addresses=(f"{ADDRESS_V4}/{PREFIX_V4}", f"{ADDRESS_V6}/64"),
                           gateways=(GATEWAY_V4, GATEWAY_V6),
                           dns=(DNS_FORWARD_V4,) if "--dns-forward" in self.argv else ())

    def _relay(self, published: list) -> None:
        """Publish these ports through netwrap's own relay (the sandbox's setup calls are still valid)."""
        import socket

        from netwrap.backends import publish_relay
        from netwrap.linux import rtnetlink

        target = self.target
        with target.calls.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                 socket.NETLINK_ROUTE) as nl_sock:
            nl_sock.settimeout(5.0)
            publish_relay.setup_routing(target.calls, rtnetlink.Rtnl(nl_sock), target.tools.nft)
        publish_relay.start(target, published, (ADDRESS_V4, ADDRESS_V6), self._stack,
                            (lambda message: None) if self.quiet else _warn)

    def stop(self, timeout: float = 2.0) -> None:
        self._stack.close()
        self.process.stop(timeout)
        self._close_fifo()
        remove_private_dir(self._workdir)

    def _close_fifo(self) -> None:
        if self._fifo_fd is not None:
            os.close(self._fifo_fd)
            self._fifo_fd = None


def _warn(message: str) -> None:
    import sys

    sys.stderr.write(f"netwrap: warning: {message}\n")


def _is_diagnostic(line: str) -> bool:
    # Some builds print "Failed to send N bytes to syslog" around each line.
    return bool(line.strip()) and "to syslog" not in line
