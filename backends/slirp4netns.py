"""slirp4netns: libslirp's user-mode TCP/IP stack attached to the sandbox by a TAP.

Attaching. Rootless, slirp4netns is given the holder's PID: it joins that
process's user and network namespaces to create tap0, and with
--enable-sandbox its long-lived process joins the user namespace again by that
PID (1.2.0 has no other way; the path form would leave it unprivileged there).
The holder is netwrap's unreaped child, so its PID cannot be reused meanwhile.
Rootful, it is handed the parent's open netns fd as /proc/self/fd/N: it names
exactly the namespace netwrap owns and needs no /proc/PID lookup.

Lifetime. Readiness is a pipe slirp4netns writes "1" to once tap0 is
configured and its sandbox is in place (--ready-fd). netwrap holds the only
write end of a second pipe (--exit-fd): when netwrap ends, even by SIGKILL,
that end closes and slirp4netns exits; a clean stop closes it on purpose, then
forces after a deadline. PDEATHSIG from spawn_helper is the second line.

IPv6. slirp4netns only answers router solicitations; left alone the kernel
would pick a SLAAC address some time after "ready". netwrap turns router
advertisements off in the sandbox before slirp4netns starts and configures
fd00::100/64 (no DAD) and the default route itself once slirp4netns is ready,
so the command never starts before IPv6 works.

Host loopback. libslirp maps its gateway (10.0.2.2, fd00::2) to the host's
loopback; --disable-host-loopback closes that unless --allow-host-loopback.
Its DNS address (10.0.2.3) reaches the host's resolver, on loopback too, but
only on port 53 (checked end to end for the installed libslirp).

The sandbox (--enable-sandbox) hides everything but /etc and /run from
slirp4netns. libslirp reads /etc/resolv.conf on each DNS flow, so when that
file resolves elsewhere (a symlink into /tmp, /var, a Nix store) and the
sandbox uses slirp's DNS, the sandbox is left off rather than break DNS.
"""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING

from netwrap.backends import (
    CAP_HOST_LOOPBACK, CAP_ICMP, CAP_IPV4, CAP_IPV6, CAP_OUTBOUND_INTERFACE, CAP_PUBLISH, CAP_PUBLISH_KEEPS_PEER,
    CAP_PUBLISH_UDP, CAP_TCP, CAP_UDP, NetworkInfo, Probe, Target,
)
from netwrap.backends.helper_process import DelegatesToProcess, HelperProcess
from netwrap.backends.probing import probe_binary
from netwrap.config import Tools
from netwrap.errors import NetwrapError
from netwrap.linux.commands import debug, searched, which
from netwrap.linux.scratch import make_private_dir, remove_private_dir

if TYPE_CHECKING:
    from netwrap.linux.interfaces import Interface

TAP = "tap0"
MTU = 65520
# slirp4netns's fixed layout for its default --cidr (and its IPv6 prefix).
ADDRESS_V4, GATEWAY_V4, DNS_V4 = "10.0.2.100/24", "10.0.2.2", "10.0.2.3"
ADDRESS_V6, GATEWAY_V6, DNS_V6 = "fd00::100/64", "fd00::2", "fd00::3"

# Without any of these netwrap cannot keep its promises (no sleeps, nothing
# left running, host loopback closed, a namespace named by fd).
REQUIRED_OPTIONS = ("configure", "mtu", "ready-fd", "exit-fd", "disable-host-loopback", "netns-type", "api-socket")

RESOLV_CONF = "/etc/resolv.conf"
# What slirp4netns's sandbox keeps visible (it bind-mounts these two only).
SANDBOX_VISIBLE = ("/etc", "/run")

PING_GROUP_RANGE = "/proc/sys/net/ipv4/ping_group_range"


class Slirp4netnsBackend:
    name = "slirp4netns"
    package = "slirp4netns"

    def __init__(self) -> None:
        self._probe: Probe | None = None

    @property
    def capabilities(self) -> frozenset[str]:
        """What this machine's slirp4netns can do in a run without --dns; probed (cached) on first use."""
        probe = self._probe or self.probe()
        # Tools.find is the lookup the run's Config holds (done once per process).
        return capabilities_for(probe, ipv6="enable-ipv6" in probe.options and Tools.find().ip is not None,
                                icmp=icmp_possible(sandboxed=use_sandbox(probe, None)))

    def probe(self) -> Probe:
        path = which("slirp4netns")
        if path is None:
            self._probe = Probe(available=False, reason=f"slirp4netns not found in {searched()}",
                                fix=f"install the '{self.package}' package (e.g. apt-get install {self.package})")
            return self._probe
        info = probe_binary("slirp4netns", path, version_argv=[path, "--version"], help_argv=[path, "--help"])
        options = frozenset(info["options"])  # type: ignore[arg-type]
        version = info["version"]  # type: ignore[assignment]
        missing = [o for o in REQUIRED_OPTIONS if o not in options]
        if missing:
            self._probe = Probe(
                available=False, path=path, version=version, options=options,
                reason=f"{path} (version {version or 'unknown'}) lacks option(s) "
                       + ", ".join("--" + m for m in missing),
                fix=f"install a newer '{self.package}' package",
            )
        else:
            self._probe = Probe(available=True, path=path, version=version, options=options)
        return self._probe

    def start(self, target: Target, config, probe: Probe | None = None) -> "Slirp4netnsHandle":
        probe = probe or self._probe or self.probe()
        ipv6 = ipv6_possible(probe, target) and outbound_ipv6_possible(probe, config.outbound_interface)
        if ipv6:
            # Before tap0 exists, so it inherits it: no SLAAC address or RA
            # route racing the static ones set after "ready".
            target.calls.write("/proc/sys/net/ipv6/conf/default/accept_ra", "0")
        sandbox = use_sandbox(probe, config)
        if "enable-sandbox" in probe.options and not sandbox:
            debug(f"slirp4netns: no --enable-sandbox: {RESOLV_CONF} is {os.path.realpath(RESOLV_CONF)}, "
                  "which its sandbox would hide from slirp's DNS")
        return Slirp4netnsHandle.start(self, target, config, probe, ipv6=ipv6, sandbox=sandbox)

    def argv(self, target: Target, config, probe: Probe, *, ready_fd: int, exit_fd: int, api_socket: str,
             ipv6: bool, sandbox: bool) -> list[str]:
        argv = [probe.path or "slirp4netns", "--configure", f"--mtu={MTU}",
                f"--ready-fd={ready_fd}", f"--exit-fd={exit_fd}", f"--api-socket={api_socket}"]
        if not config.allow_host_loopback:
            argv.append("--disable-host-loopback")
        if ipv6:
            argv.append("--enable-ipv6")
        if sandbox:
            argv.append("--enable-sandbox")
        if "enable-seccomp" in probe.options:
            argv.append("--enable-seccomp")
        argv += _outbound_options(config.outbound_interface, ipv6=ipv6)
        if target.rootful:
            argv += ["--netns-type=path", f"/proc/self/fd/{target.netns_fd}", TAP]
        else:
            argv += [str(target.pid), TAP]
        return argv


def _outbound_options(outbound: "Interface | None", *, ipv6: bool) -> list[str]:
    """Bind slirp4netns's host sockets to IFACE's first address of each family.

    slirp4netns can only bind an address, not a device: the kernel still
    picks the route by destination, so the packets leave by IFACE when the
    host routes by source address (a multi-homed host's `ip rule from ADDR`),
    else by its route to the destination, with IFACE's address as source.
    """
    if outbound is None:
        return []
    out = [f"--outbound-addr={outbound.ipv4[0]}"]
    if ipv6:
        out.append(f"--outbound-addr6={outbound.ipv6[0]}")
    return out


def ipv6_possible(probe: Probe, target: Target) -> bool:
    """IPv6 needs the build's --enable-ipv6 and `ip` to configure it inside."""
    if "enable-ipv6" not in probe.options or target.calls is None:
        return False
    if target.tools.ip is None:
        debug("slirp4netns: IPv6 left off: `ip` (iproute2) is not installed")
        return False
    return True


def outbound_ipv6_possible(probe: Probe, outbound: "Interface | None") -> bool:
    """With --iface, IPv6 only if it can be bound to IFACE's IPv6 address: it may not leave elsewhere."""
    if outbound is None:
        return True
    if not outbound.ipv6:
        debug(f"slirp4netns: IPv6 left off: --iface {outbound.name} has no IPv6 address")
        return False
    if "outbound-addr6" not in probe.options:
        debug("slirp4netns: IPv6 left off: this build has no --outbound-addr6 for --iface")
        return False
    return True


def capabilities_for(probe: Probe, *, ipv6: bool, icmp: bool) -> frozenset[str]:
    caps = {CAP_IPV4, CAP_TCP, CAP_UDP, CAP_HOST_LOOPBACK}
    if ipv6:
        caps.add(CAP_IPV6)
    if "api-socket" in probe.options:
        # libslirp gives a forwarded connection or datagram the client's own
        # address as its source (only a client on the host's loopback shows
        # up as the gateway, 10.0.2.2): measured end to end for TCP and UDP.
        # add_hostfwd takes IPv4 host addresses only (1.2.x): no CAP_PUBLISH_IPV6.
        caps |= {CAP_PUBLISH, CAP_PUBLISH_UDP, CAP_PUBLISH_KEEPS_PEER}
    if "outbound-addr" in probe.options:
        caps.add(CAP_OUTBOUND_INTERFACE)
    if icmp:
        caps.add(CAP_ICMP)
    return frozenset(caps)


def icmp_possible(*, sandboxed: bool) -> bool:
    """Whether slirp4netns can forward ICMP echo (IPv4 only: libslirp 4.7 drops IPv6 echo).

    libslirp opens a ping socket, or a raw one if it may; without either it
    sends a UDP datagram to port 7 and calls an answer a reply. Its sandbox
    drops CAP_NET_RAW, so only ping sockets remain there.
    """
    return ping_sockets_allowed() or (os.geteuid() == 0 and not sandboxed)


def ping_sockets_allowed(path: str = PING_GROUP_RANGE) -> bool:
    """Whether this process's groups may open ICMP ping sockets in this netns."""
    try:
        with open(path) as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return False
    return any(low <= gid <= high for gid in {os.getegid(), *os.getgroups()})


def use_sandbox(probe: Probe, config, resolv_conf: str = RESOLV_CONF) -> bool:
    """--enable-sandbox, unless the build lacks it or it would break slirp's DNS.

    The sandbox shows slirp4netns only /etc and /run, and libslirp reads
    resolv.conf on every DNS flow; with forced resolvers (--dns) slirp's DNS
    address is not used at all.
    """
    if "enable-sandbox" not in probe.options:
        return False
    if getattr(config, "dns", ()):
        return True
    real = os.path.realpath(resolv_conf)
    return any(real == d or real.startswith(d + "/") for d in SANDBOX_VISIBLE)


def host_has_v6_resolver(resolv_conf: str = RESOLV_CONF) -> bool:
    """libslirp sends fd00::3 to the host's first IPv6 resolver, else to ::1."""
    try:
        with open(resolv_conf, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and ":" in words[1] and words[1] != "::1":
            return True
    return False


class Slirp4netnsHandle(DelegatesToProcess):
    """A running slirp4netns, owned by the netwrap parent."""

    def __init__(self, *, process: HelperProcess, ready_fd: int, exit_fd: int, workdir: str, api_socket: str,
                 target: Target, ipv6: bool) -> None:
        self.process = process
        self.pid = process.pid
        self.argv = process.argv
        self.api_socket = api_socket
        self._ready_fd: int | None = ready_fd
        self._exit_fd: int | None = exit_fd
        self._workdir = workdir
        self._target = target
        self._ipv6 = ipv6
        self.to_publish: tuple = ()  # the run's --publish, done through the API once ready

    @classmethod
    def start(cls, backend: Slirp4netnsBackend, target: Target, config, probe: Probe, *,
              ipv6: bool, sandbox: bool) -> "Slirp4netnsHandle":
        workdir = make_private_dir("slirp4netns")
        theirs: list[int] = []
        ours: list[int] = []
        try:
            ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
            ours.append(ready_r)
            theirs.append(ready_w)
            exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
            ours.append(exit_w)
            theirs.append(exit_r)
            api_socket = os.path.join(workdir, "api.sock")
            argv = backend.argv(target, config, probe, ready_fd=ready_w, exit_fd=exit_r, api_socket=api_socket,
                                ipv6=ipv6, sandbox=sandbox)
            pass_fds = [ready_w, exit_r] + ([target.netns_fd] if target.rootful else [])
            process = HelperProcess("slirp4netns", argv, pass_fds=pass_fds, is_diagnostic=_is_diagnostic)
        except BaseException:
            _close_all(ours)
            remove_private_dir(workdir)
            raise
        finally:
            _close_all(theirs)  # slirp4netns has its copies; EOF must mean it is gone
        handle = cls(process=process, ready_fd=ready_r, exit_fd=exit_w, workdir=workdir,
                     api_socket=api_socket, target=target, ipv6=ipv6)
        handle.to_publish = tuple(getattr(config, "publish", ()))
        return handle

    def wait_ready(self, timeout: float) -> NetworkInfo:
        if self._ready_fd is not None:
            try:
                ready = self.process.wait_ready(self._ready_fd, timeout, tail_lines=3)
                if ready != b"1":
                    raise NetwrapError(f"slirp4netns wrote {ready[:16]!r} to its ready fd, not b'1'")
            except NetwrapError:
                self.stop()
                raise
            os.close(self._ready_fd)
            self._ready_fd = None
        self._configure_inside()
        try:
            for published in self.to_publish:
                # IPv4 only: without HOST_IP, 0.0.0.0 (the API refuses IPv6 addresses).
                self.publish(published.proto, published.host_port, published.sandbox_port,
                             published.host_ip or "0.0.0.0")
        except NetwrapError:
            self.stop()
            raise
        return self.network()

    def network(self) -> NetworkInfo:
        if not self._ipv6:
            return NetworkInfo(interface=TAP, addresses=(ADDRESS_V4,), gateways=(GATEWAY_V4,), dns=(DNS_V4,))
        # fd00::3 is worth listing only if libslirp has an IPv6 resolver to send it to.
        dns = (DNS_V4, DNS_V6) if host_has_v6_resolver() else (DNS_V4,)
        return NetworkInfo(interface=TAP, addresses=(ADDRESS_V4, ADDRESS_V6), gateways=(GATEWAY_V4, GATEWAY_V6),
                           dns=dns)

    def _configure_inside(self) -> None:
        if not self._ipv6:
            return
        # nodad: the address is usable at once, so "ready" means ready.
        batch = (f"address add {ADDRESS_V6} dev {TAP} nodad\n"
                 f"route add ::/0 via {GATEWAY_V6} dev {TAP}\n")
        try:
            self._target.calls.run([self._target.tools.ip or "ip", "-batch", "-"], input=batch)
        except NetwrapError:
            self.stop()
            raise

    def publish(self, proto: str, host_port: int, guest_port: int, host_addr: str = "0.0.0.0") -> int:
        """Forward host_addr:host_port on the host to the sandbox's guest_port; the rule's id."""
        reply = self._api({"execute": "add_hostfwd", "arguments": {
            "proto": proto, "host_addr": host_addr, "host_port": host_port, "guest_port": guest_port}})
        return int(reply["id"])

    def unpublish(self, rule_id: int) -> None:
        self._api({"execute": "remove_hostfwd", "arguments": {"id": rule_id}})

    def published(self) -> list[dict]:
        """slirp4netns's own list of forwards: id, proto, host_addr, host_port, guest_addr, guest_port."""
        return list(self._api({"execute": "list_hostfwd"}).get("entries", []))

    def _api(self, request: dict) -> dict:
        # One request per connection, ended by SHUT_WR (slirp4netns's protocol).
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            try:
                s.connect(self.api_socket)
                s.sendall(json.dumps(request).encode())
                s.shutdown(socket.SHUT_WR)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            except OSError as exc:
                raise NetwrapError(f"slirp4netns API ({request['execute']}): {exc}") from None
        return api_reply(request["execute"], data)

    def stop(self, timeout: float = 2.0) -> None:
        # Closing the exit fd is slirp4netns's own way to stop; then force.
        self.process.stop(timeout, graceful=self._close_exit_fd)
        self._close_exit_fd()
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None
        remove_private_dir(self._workdir)

    def _close_exit_fd(self) -> None:
        if self._exit_fd is not None:
            os.close(self._exit_fd)
            self._exit_fd = None


def api_reply(execute: str, data: bytes) -> dict:
    """What an API request returned, from the bytes slirp4netns answered; an error names the request."""
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise NetwrapError(f"slirp4netns API ({execute}): bad reply {data[:200]!r}")
    if "error" in reply:
        error = reply["error"]
        detail = error.get("desc", error) if isinstance(error, dict) else error
        raise NetwrapError(f"slirp4netns API ({execute}): {detail}")
    # list_hostfwd's answer (1.2.0) is {"entries": [...]}, not wrapped in "return".
    return reply.get("return", reply)


# slirp4netns's normal chatter, which says nothing about a failure.
_CHATTER = ("sent tapfd=", "received tapfd=", "Starting slirp", "* ", "WARNING: Support for", "WARNING: 127.0.0.1",
            "do_slirp is exiting", "exitfd event", "apifd event", "Usage:", "User-mode networking", "-",
            "api_handler: got request:", "seccomp: The following syscalls are blocked:")


def _is_diagnostic(line: str) -> bool:
    line = line.strip()
    return bool(line) and not line.startswith(_CHATTER)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()
