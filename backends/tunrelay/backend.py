"""tunrelay: the built-in backend.  Needs /dev/net/tun, nothing compiled, no
external program (nftables only for the faster TCP path, when present).

Setup (in start(), on netwrap's main thread, through the setup-time calls
into the sandbox, which are only valid until "backend-ready"):

  1. init opens tun0 in the sandbox (IFF_TUN | IFF_NO_PI | IFF_VNET_HDR, with
     checksum and segmentation offloads) and sends its fd back;
  2. an rtnetlink socket made in the sandbox configures it: MTU 65520, a
     long queue, 10.0.2.100/24 and fd00::100/64, default routes (netwrap.linux.rtnetlink);
  3. TCP, one of two paths (both terminate TCP in the child's own kernel):
       tproxy  nftables + policy routing hand each connection to transparent
               listeners on the sandbox's loopback (tproxy.py, syngate.py);
               bytes then go kernel to kernel with splice, no per-packet Python
       nat     the relay rewrites TCP packets on the TUN so that the child's
               kernel connects to a listener of the relay (core.py, nat.py)
     --tunrelay-tcp picks one; auto takes tproxy when nft is installed and
     the ruleset loads, else nat;
  4. the engine (engine.py) runs in a thread of the parent until stop();
  5. --publish (needs nftables): host listeners, and connections made again
     inside from the client's own address (netwrap.backends.publish_relay),
     in a second thread.

UDP, ICMP echo and DNS go through the packet core on both paths.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import sys
import threading
from typing import TYPE_CHECKING

from netwrap import __version__
from netwrap.backends import (
    CAP_HOST_LOOPBACK, CAP_ICMP, CAP_ICMP6, CAP_IPV4, CAP_IPV6, CAP_OUTBOUND_INTERFACE, CAP_PUBLISH,
    CAP_PUBLISH_IPV6, CAP_PUBLISH_KEEPS_PEER, CAP_PUBLISH_UDP, CAP_TCP, CAP_UDP, Decide, NetworkInfo, Probe, Target,
)
from netwrap.config import Tools
from netwrap.errors import NetwrapError
from netwrap.linux import rtnetlink
from netwrap.linux import tproxy as transparent
from netwrap.linux.commands import debug, searched
from netwrap.linux.hostfiles import read_host_file

from . import addressing as A
from . import tproxy
from .core import policy_from_decide
from .nat import ACCEPT, Policy, Verdict
from .packets import TCP, Packet
from .vnet import (
    IFF_NO_PI, IFF_TUN, IFF_VNET_HDR, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6, VNET_HDR_LEN,
)

if TYPE_CHECKING:  # types only: backends never import the front-end at run time
    from netwrap.config import Config
    from netwrap.sandbox.calls import SandboxCalls

TCP_PATHS = ("auto", "tproxy", "nat")
LISTEN_BACKLOG = 4096
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6
OFFLOADS_NO_USO = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6  # kernels before 6.2
STOP_TIMEOUT = 2.0


class TunrelayBackend:
    name = "tunrelay"
    package = "netwrap"

    @property
    def capabilities(self) -> frozenset[str]:
        from .engine import OutboundDevice, icmp_problem

        caps = {CAP_IPV4, CAP_IPV6, CAP_TCP, CAP_UDP, CAP_HOST_LOOPBACK}
        # --iface binds host sockets to the device: unprivileged since Linux 5.7.
        if OutboundDevice("lo").check() is None:
            caps.add(CAP_OUTBOUND_INTERFACE)
        # Echo goes out through host ping sockets (net.ipv4.ping_group_range
        # covers both families) or raw sockets as root: declared only if so.
        if icmp_problem(socket.AF_INET) is None:
            caps.add(CAP_ICMP)
        if icmp_problem(socket.AF_INET6) is None:
            caps.add(CAP_ICMP6)
        # Publishing routes the server's replies back to its transparent
        # sockets with nftables marks (publish.py): only where nft is installed.
        if Tools.find().nft is not None:
            caps |= {CAP_PUBLISH, CAP_PUBLISH_UDP, CAP_PUBLISH_IPV6, CAP_PUBLISH_KEEPS_PEER}
        return frozenset(caps)

    def probe(self) -> Probe:
        where = os.path.dirname(os.path.abspath(__file__))
        version = f"{__version__} (built in)"
        try:
            os.close(os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC))
        except FileNotFoundError:
            return Probe(available=False, version=version, path=where, reason="/dev/net/tun does not exist",
                         fix="load the tun module (modprobe tun) or create it: mknod -m 0666 /dev/net/tun c 10 200")
        except PermissionError:
            mode = oct(os.stat("/dev/net/tun").st_mode & 0o777)
            return Probe(available=False, version=version, path=where,
                         reason=f"/dev/net/tun is not accessible to this user (mode {mode})",
                         fix="chmod 0666 /dev/net/tun (most distributions ship it so)")
        except OSError as exc:
            return Probe(available=False, version=version, path=where,
                         reason=f"/dev/net/tun cannot be opened: {exc.strerror}", fix="see 'netwrap doctor'")
        return Probe(available=True, version=version, path=where)

    def start(self, target: Target, config: Config, probe: Probe | None = None) -> "TunrelayHandle":
        path = config.tunrelay_tcp
        if path not in TCP_PATHS:
            raise NetwrapError(f"unknown tunrelay TCP path {path!r} (known: {', '.join(TCP_PATHS)})")
        return TunrelayHandle.start(target, config, path)


def _raise_fd_limit() -> int:
    """Each relayed TCP connection holds two sockets (and briefly pipes):
    take the hard limit on open files as the soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class TunrelayHandle:
    pid: int | None = None  # in-process: no helper to signal
    # The network policy is judged by the core (no nftables): netwrap.sandbox.supervisor sets up no nft engine.
    enforces_policy: bool = False

    def __init__(self, *, stack: contextlib.ExitStack, engine, thread: threading.Thread, path: str,
                 notify_r: int, info: NetworkInfo, verbosity: int) -> None:
        self._stack = stack
        self.engine = engine
        self._thread = thread
        self.path = path
        self._notify_r: int | None = notify_r
        self._info = info
        self._verbosity = verbosity
        self._stopped = False
        self.crash: str | None = None

    # -- setup ------------------------------------------------------------------------------------
    @classmethod
    def start(cls, target: Target, config: Config, path: str) -> "TunrelayHandle":
        from .core import CoreConfig, RelayCore
        from .engine import Engine, OutboundDevice
        from .nat import NatConfig
        from .syngate import SynGate

        calls = target.calls
        if calls is None:
            raise NetwrapError("tunrelay needs setup calls into the sandbox")
        outbound = None
        if config.outbound_interface is not None:
            outbound = OutboundDevice(config.outbound_interface.name)
            problem = outbound.check()
            if problem:
                raise NetwrapError(f"--iface: tunrelay {problem}")
        nofile = _raise_fd_limit()
        stack = contextlib.ExitStack()
        try:
            tun_fd = _open_tun(calls)
            stack.callback(os.close, tun_fd)
            os.set_blocking(tun_fd, False)
            with calls.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                              socket.NETLINK_ROUTE) as nl_sock:
                nl_sock.settimeout(5.0)
                rtnl = rtnetlink.Rtnl(nl_sock)
                index = _configure_tun(rtnl)
                listeners: list[socket.socket] = []
                chosen = path
                if path in ("auto", "tproxy"):
                    try:
                        listeners = _setup_tproxy(calls, rtnl, stack, target.tools.nft)
                        chosen = "tproxy"
                    except (NetwrapError, OSError) as exc:
                        if path == "tproxy":
                            raise NetwrapError(f"tunrelay: the TPROXY fast path is not available here: {exc}") from None
                        debug(f"tunrelay: TPROXY fast path unavailable ({exc}); using the TUN NAT path")
                        chosen = "nat"
                if chosen == "nat":
                    listeners = _nat_listeners(calls, stack)
                if config.publish:
                    from netwrap.backends import publish_relay  # only a run that publishes pays for it

                    publish_relay.setup_routing(calls, rtnl, target.tools.nft)
            debug(f"tunrelay: {index=} TCP path {chosen}")

            # Each relayed connection holds two sockets; keep headroom for the rest.
            max_flows = max(64, min(8192, (nofile - 256) // 3))
            nat = NatConfig()
            if chosen == "nat":
                p4, p6 = listeners[0].getsockname()[1], listeners[1].getsockname()[1]
                nat = NatConfig(listener4=(A.ADDRESS_V4, p4), listener6=(A.ADDRESS_V6, p6),
                                pool4=A.POOL_V4, pool6=A.POOL_V6, max_flows=max_flows,
                                max_pending=min(1024, max_flows))
            destinations = A.Destinations(
                resolver=A.first_resolver(read_host_file("/etc/resolv.conf")),
                allow_host_loopback=config.allow_host_loopback,
            )
            info = NetworkInfo(interface=A.TUN_NAME,
                               addresses=(f"{A.ADDRESS_V4}/{A.PREFIX_V4}", f"{A.ADDRESS_V6}/{A.PREFIX_V6}"),
                               gateways=(A.GATEWAY_V4, A.GATEWAY_V6), dns=(A.DNS_V4, A.DNS_V6),
                               internal_networks=(A.POOL_V4, A.POOL_V6) if chosen == "nat" else ())
            udp_flows = max(64, min(4096, nofile // 4))
            core_policy = destinations.policy
            # Without nftables nothing in the sandbox enforces --allow/--deny/...;
            # on the NAT path every packet of the child, TCP SYNs included,
            # passes the core, so the core judges each new flow instead.
            decider = target.policy_decider
            enforces_policy = chosen == "nat" and target.tools.nft is None and decider is not None
            if enforces_policy and decider is not None:
                core_policy = _ruled(decider(info), destinations.policy)
            core = RelayCore(CoreConfig(nat=nat, udp_max_flows=udp_flows), policy=core_policy)
            gate = None
            if chosen == "tproxy":
                gate = SynGate(counters=core.counters, policy=destinations.policy,
                               max_flows=max_flows, max_pending=min(1024, max_flows))

            verbosity = config.verbosity

            def warn(message: str) -> None:
                if verbosity >= 0:
                    sys.stderr.write(f"netwrap: warning: {message}\n")

            if config.publish:
                from netwrap.backends import publish_relay

                publish_relay.start(target, list(config.publish), (A.ADDRESS_V4, A.ADDRESS_V6), stack, warn)
            engine = Engine(tun_fd=tun_fd, core=core, gate=gate, listeners=listeners, max_pumps=max_flows,
                            warn=warn, outbound=outbound)
            stack.callback(engine.close)  # after the thread has ended (stop() joins it first)
            notify_r, notify_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            stack.callback(os.close, notify_r)
            handle_box: list[TunrelayHandle] = []

            def main() -> None:
                try:
                    engine.run()
                except BaseException:
                    import traceback

                    if handle_box:
                        handle_box[0].crash = traceback.format_exc()
                finally:
                    os.close(notify_w)  # EOF: netwrap's loop looks at poll()

            thread = threading.Thread(target=main, name="tunrelay", daemon=True)
            handle = cls(stack=stack, engine=engine, thread=thread, path=chosen, notify_r=notify_r,
                         info=info, verbosity=verbosity)
            handle.enforces_policy = enforces_policy
            handle_box.append(handle)
            try:
                thread.start()
            except BaseException:
                os.close(notify_w)  # the thread would have closed it
                raise
            return handle
        except BaseException:
            stack.close()
            raise

    # -- the Handle protocol ------------------------------------------------------------------------
    def wait_ready(self, timeout: float) -> NetworkInfo:
        # Everything was set up in start(); the engine serves from its first loop.
        if not self._thread.is_alive() and self.crash:
            raise NetwrapError(f"tunrelay failed: {self.crash.strip().splitlines()[-1]}")
        return self._info

    def fileno(self) -> int | None:
        return self._notify_r

    def on_readable(self) -> None:
        if self._notify_r is None:
            return
        try:
            if os.read(self._notify_r, 64):
                return
        except BlockingIOError:
            return
        # EOF: the engine thread has ended; stop watching
        self._notify_r = None

    def poll(self) -> int | None:
        if self._thread.is_alive():
            return None
        return 0 if self._stopped and not self.crash else 1

    def diagnostics(self) -> str:
        lines = [f"tunrelay ({self.path} TCP path)"]
        if self.crash:
            lines.append(self.crash.strip())
        stats = {k: v for k, v in self.engine.stats().items() if v}
        if stats:
            lines.append(", ".join(f"{k}={v}" for k, v in sorted(stats.items())))
        if self.engine.icmp.problem:
            lines.append(f"ping: {self.engine.icmp.problem}")
        return "\n".join(lines)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.engine.stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            # A thread cannot be killed; it is a daemon and ends with netwrap.
            # Leave its fds open rather than close them under it.
            debug("tunrelay: engine did not stop in time; leaving it to process exit")
            return
        if self._verbosity > 0:
            debug("tunrelay: " + self.diagnostics().replace("\n", "; "))
        self._notify_r = None
        self._stack.close()


# -- setup steps ---------------------------------------------------------------------------------


def _ruled(decide: Decide, passes: Policy) -> Policy:
    """The run's rules first, on the address the child sent to (as nftables
    in the sandbox would judge it), then where an allowed flow goes.
    Refused TCP gets a reset, the rest ICMP admin-prohibited: both fail fast."""
    tcp = policy_from_decide(decide, reject="rst")
    other = policy_from_decide(decide)

    def policy(pkt: Packet) -> Verdict:
        verdict = (tcp if pkt.proto == TCP else other)(pkt)
        return verdict if verdict.action != ACCEPT else passes(pkt)

    return policy


def _open_tun(calls: SandboxCalls) -> int:
    flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR
    try:
        fd, _ = calls.tun(A.TUN_NAME, flags, offload=OFFLOADS, vnet_hdr_size=VNET_HDR_LEN)
    except NetwrapError:
        # UDP segmentation offload is younger (6.2) than the rest: retry without
        fd, _ = calls.tun(A.TUN_NAME, flags, offload=OFFLOADS_NO_USO, vnet_hdr_size=VNET_HDR_LEN)
    return fd


def _configure_tun(rtnl: rtnetlink.Rtnl) -> int:
    try:
        index = rtnl.link_index(A.TUN_NAME)
        rtnl.request(lambda s: rtnetlink.set_link(1, up=True, seq=s), "bring lo up")
        rtnl.request(lambda s: rtnetlink.set_link(index, up=True, mtu=A.MTU, txqlen=A.TXQUEUELEN, seq=s),
                     f"bring {A.TUN_NAME} up")
        for addr, plen in ((A.ADDRESS_V4, A.PREFIX_V4), (A.ADDRESS_V6, A.PREFIX_V6)):
            rtnl.request(lambda s: rtnetlink.add_address(index, A.packed(addr), plen, seq=s), f"add address {addr}")
        for family, gw in ((socket.AF_INET, A.GATEWAY_V4), (socket.AF_INET6, A.GATEWAY_V6)):
            rtnl.request(lambda s: rtnetlink.add_route(family, gateway=A.packed(gw), oif=index, seq=s),
                         f"add default route via {gw}")
    except OSError as exc:
        raise NetwrapError(f"tunrelay: cannot configure {A.TUN_NAME} in the sandbox: {exc}") from None
    return index


def _setup_tproxy(calls: SandboxCalls, rtnl: rtnetlink.Rtnl, stack: contextlib.ExitStack,
                  nft: str | None) -> list[socket.socket]:
    if nft is None:
        raise NetwrapError(f"nft not found in {searched()} (install the 'nftables' package)")
    # The relay writes a connection's SYN back into the TUN with the app's
    # own address as source: accepted only with accept_local, and not by a
    # strict reverse-path filter (lo would be the way back).
    conf = "/proc/sys/net/ipv4/conf"
    calls.write(f"{conf}/{A.TUN_NAME}/accept_local", "1")
    calls.write(f"{conf}/{A.TUN_NAME}/rp_filter", "0")
    calls.write(f"{conf}/all/rp_filter", "0")
    l4 = calls.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC,
                      options=transparent.listener_options(socket.AF_INET), bind=("127.0.0.1", 0),
                      listen=LISTEN_BACKLOG)
    stack.callback(l4.close)
    l6 = calls.socket(socket.AF_INET6, socket.SOCK_STREAM | socket.SOCK_CLOEXEC,
                      options=transparent.listener_options(socket.AF_INET6),
                      bind=("::1", 0), listen=LISTEN_BACKLOG)
    stack.callback(l6.close)
    ruleset = tproxy.render_ruleset(A.TUN_NAME, l4.getsockname()[1], l6.getsockname()[1])
    calls.run([nft, "-f", "-"], input=ruleset)
    transparent.route_marked_to_lo(rtnl, mark=tproxy.MARK, table=tproxy.ROUTE_TABLE, priority=tproxy.RULE_PRIORITY)
    return [l4, l6]


def _nat_listeners(calls: SandboxCalls, stack: contextlib.ExitStack) -> list[socket.socket]:
    out = []
    for family, addr, options in (
        (socket.AF_INET, A.ADDRESS_V4, []),
        (socket.AF_INET6, A.ADDRESS_V6, [(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)]),
    ):
        s = calls.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, options=options, bind=(addr, 0),
                         listen=LISTEN_BACKLOG)
        stack.callback(s.close)
        out.append(s)
    return out
