"""The network policy's I/O: set it up in the sandbox, keep its name sets current, log flows.

prepare() runs in the parent during setup, while init still serves sandbox
calls (netwrap.sandbox.calls). It builds the Policy from the flags and what
the backend set up (its resolver, the addresses through which it reaches the
host), resolves --allow hostnames at start (netwrap.policy.startup), asks
init for every socket needed later (all of them live in the sandbox's
network namespace) and renders the nftables ruleset that init loads with the
rest of the front-end. start() then runs the flow log's reader on a thread
of its own until stop(); learn() takes what the DNS path (netwrap.dns.path)
learns from answers.

Keeping hostname sets in sync with what the sandbox's DNS answers
------------------------------------------------------------------
A name resolved at start (netwrap.policy.startup) can answer differently
later (round robin, CDNs, short TTLs). Every DNS flow of the command goes
through netwrap's DNS path (netwrap.dns.path): when an answer, over UDP or
TCP, from whichever server, names an allowed host, learn() adds the
addresses to that host's sets *before* the answer is handed back. No
connection can race the update, because the command only learns the
address once the set holds it.

The sets are updated with nf_tables netlink messages that the parent sends
on a NETLINK_NETFILTER socket init created in the sandbox during setup.
The kernel wants CAP_NET_ADMIN over the socket's netns from whoever opened
the socket (init, root there) and from the sender: rootless, the parent owns
the sandbox's user namespace and so holds every capability in it; rootful it
is root. The alternative, init serving calls for the whole run, would leave
a request channel open in the command's own ancestor and put a process
switch plus an `nft` exec on the path of every DNS answer. With this design
init does nothing once the command has started. A learned address stays
in its set for the answer's TTL, at least a minute
(netwrap.policy.nft.learned_timeout); each answer that gives it again
restarts that time, and the kernel removes it when it runs out. Connections
already open are kept: established flows are accepted before any set is
consulted. Addresses resolved at start have no TTL and stay for the run.
Nothing is kept here per answer: what the kernel holds is bounded by
netwrap.policy.nft.NAME_SET_SIZE per set. /etc/hosts and --add-host
entries for allowed names are read at start.

Flow log and counts
-------------------
Allowed flows: conntrack events (new, update, destroy) from a netlink socket
in the sandbox subscribed to the conntrack groups; the deciding rule is the
conntrack mark the policy set. Refused flows: NFLOG from the refusing rules.
Bytes need net.netfilter.nf_conntrack_acct=1 in the sandbox's netns (per
netns). At the end the parent flushes the sandbox's conntrack table, so
every flow still open (TCP in TIME_WAIT for two minutes) arrives as a
destroy event with its final counters. Parsing: netwrap.linux.nfnetlink;
bookkeeping: netwrap.policy.flowlog.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

from netwrap.errors import NetwrapError
from netwrap.linux import netlink, nfnetlink
from netwrap.linux.commands import debug
from netwrap.linux.loopthread import LoopThread
from netwrap.policy import flowlog
from netwrap.policy import nft as policy_nft
from netwrap.policy.model import IPAddress, Policy, normalize_address
from netwrap.policy.startup import build, host_addresses, hosts_texts, resolve_at_start
from netwrap.sandbox.setup import policy_flags

if TYPE_CHECKING:
    from netwrap.backends import NetworkInfo
    from netwrap.config import Config
    from netwrap.dns.proxy import Learn
    from netwrap.sandbox.calls import SandboxCalls
    from netwrap.sandbox.setup import SetupPlan

NFLOG_GROUP = 0x4E57  # the sandbox's own netns: no other user of the group
RCVBUF = 4 << 20
ACK_TIMEOUT = 2.0
STOP_TIMEOUT = 5.0  # stop() without a deadline: this long from now
SYSCTL_ACCT = "/proc/sys/net/netfilter/nf_conntrack_acct"
SYSCTL_TIMESTAMP = "/proc/sys/net/netfilter/nf_conntrack_timestamp"


def _open_flow_log(config: Config) -> TextIO:
    """The --flow-log file, emptied: through the fd the flags' check opened, else opened safely now."""
    fd = next((out.fd for out in getattr(config, "outputs", ()) if out.path == config.flow_log), None)
    if fd is None:
        from netwrap.errors import UsageError
        from netwrap.linux import userfiles

        try:
            fd = userfiles.open_output(config.flow_log, flag="--flow-log", identity=None).fd
        except UsageError as exc:  # the run has started: a failure now, not bad usage
            raise NetwrapError(str(exc)) from None
    os.ftruncate(fd, 0)
    return os.fdopen(fd, "w", encoding="utf-8", buffering=1)


class PolicyEngine:
    """Everything the policy needs after setup. Build it with prepare().

    Lifecycle: start() returns once the DNS proxy and the flow log's reader
    serve; stop(deadline) ends both by the deadline, reads the last flows and
    closes everything. stop() is idempotent and also undoes a prepare() whose
    start() never came.
    """

    def __init__(self, *, config: Config, policy: Policy, tracking: bool, nft_path: str) -> None:
        self.config = config
        self.policy = policy
        self.tracking = tracking
        self.nft_path = nft_path
        self.ruleset = ""
        self.resolved: dict[str, set[IPAddress]] = {}
        self.sets = policy_nft.name_sets(policy)
        self.book = flowlog.FlowBook(policy_nft.verdict_tags(policy)) if tracking else None
        self.control: socket.socket | None = None  # nf_tables updates, conntrack flush
        self.events: socket.socket | None = None  # conntrack events
        self.nflog: socket.socket | None = None  # refused packets
        self.lost_events = 0
        self.errors: list[str] = []
        self._seq = 1
        self._log = None
        self._flows: LoopThread | None = None
        self._stack = contextlib.ExitStack()
        self._stopped = False

    # -- setup ----------------------------------------------------------------------------------

    @classmethod
    def prepare(cls, config: Config, calls: SandboxCalls, network: NetworkInfo, *,
                nft: str | None) -> PolicyEngine | None:
        """None when nothing is to be enforced or counted."""
        wanted = bool(policy_flags(config))
        tracking = config.flow_log is not None or config.summary
        nft = nft or config.tools.nft
        if not wanted and not (tracking and nft):
            return None  # --summary alone without nftables: no counts, and no error
        if nft is None:  # frontend.check refused this already; a library caller may not have
            raise NetwrapError("the network policy needs nftables; install the 'nftables' package")
        resolvers = list(config.dns) if config.dns else list(network.dns)
        policy = build(config, dns_servers=resolvers, host_addresses=host_addresses(network))
        engine = cls(config=config, policy=policy, tracking=tracking, nft_path=nft)
        try:
            engine._setup(calls)
        except OSError as exc:
            engine._stack.close()
            raise NetwrapError(f"cannot set up the network policy: {exc.strerror or exc}") from None
        except BaseException:
            engine._stack.close()
            raise
        return engine

    def _sandbox_netlink(self, calls: SandboxCalls, groups: int = 0) -> socket.socket:
        s = calls.socket(socket.AF_NETLINK, socket.SOCK_RAW, nfnetlink.NETLINK_NETFILTER, bind=(0, groups))
        self._stack.callback(s.close)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass
        return s

    def _setup(self, calls: SandboxCalls) -> None:
        policy = self.policy
        if policy.hostnames or self.tracking:
            self.control = self._sandbox_netlink(calls)
            self.control.settimeout(ACK_TIMEOUT)
        if policy.hostnames:
            self.resolved = resolve_at_start(policy.hostnames, hosts_texts(self.config), forced=self.config.dns)
        if self.tracking:
            self.events = self._sandbox_netlink(calls, nfnetlink.CT_EVENT_GROUPS)
            self.nflog = self._sandbox_netlink(calls)
            self._request(self.nflog, nfnetlink.nflog_bind(NFLOG_GROUP, seq=self._take_seq(3)), "bind NFLOG")
            self.nflog.setblocking(False)
            self.events.setblocking(False)
            # Per-netns, and before any flow exists: byte counters and start/stop times.
            for path in (SYSCTL_ACCT, SYSCTL_TIMESTAMP):
                calls.write(path, "1")
        self.ruleset = policy_nft.render_policy(
            policy, resolved_names={n: sorted(a, key=str) for n, a in self.resolved.items()},
            flow_log_group=NFLOG_GROUP if self.tracking else None,
            dns_tcp=not self.config.dns_allowed_only,
            published=[(p.proto, p.sandbox_port) for p in self.config.publish])
        if self.config.flow_log is not None:
            try:
                self._log = _open_flow_log(self.config)
            except OSError as exc:
                raise NetwrapError(f"--flow-log {self.config.flow_log!r}: {exc.strerror}") from None
            self._stack.callback(self._log.close)

    def _take_seq(self, n: int = 1) -> int:
        seq = self._seq
        self._seq += n
        return seq

    def _request(self, sock: socket.socket, data: bytes, what: str, timeout: float = ACK_TIMEOUT) -> None:
        """Send a request and wait for every ack it asked for; NetwrapError on refusal."""
        previous = sock.gettimeout()
        sock.settimeout(max(0.01, timeout))
        try:
            netlink.request(sock, data, what)
        except socket.timeout:
            raise NetwrapError(f"{what}: no answer from the kernel") from None
        except OSError as exc:
            raise NetwrapError(exc.strerror or f"{what}: {exc}") from None
        finally:
            sock.settimeout(previous)

    def merge(self, plan: SetupPlan) -> SetupPlan:
        """The front-end's SetupPlan with this ruleset added (one `nft -f` for both)."""
        import attrs

        ruleset = (plan.nft_ruleset or "") + self.ruleset
        return attrs.evolve(plan, nft_ruleset=ruleset, nft_path=plan.nft_path or self.nft_path)

    # -- running --------------------------------------------------------------------------------

    def start(self) -> None:
        """Read flows; returns once the reader runs."""
        if self._stopped:
            return
        if self.tracking and self._flows is None:
            assert self.events is not None and self.nflog is not None
            self._flows = LoopThread(name="netwrap-flows",
                                     handlers={self.events.fileno(): self._on_events,
                                               self.nflog.fileno(): self._on_nflog},
                                     timeout=self._flows_timeout, tick=self._flows_due,
                                     on_error=self.errors.append)
            self._flows.start()

    # -- keeping name sets current ------------------------------------------------------------

    def learn(self, learned: Learn) -> None:
        """Add an answer's addresses for allowed hostnames to their sets, each
        for its TTL (on a DNS proxy's thread, one call at a time). Addresses already there are
        added again: that restarts their timeout."""
        for found in learned.names:
            name = found.name
            if name not in self.sets:
                continue
            addresses = list(dict.fromkeys(normalize_address(a) for a in found.addresses))
            timeout = policy_nft.learned_timeout(found.ttl)
            sets = self.sets[name]
            for version, set_name in ((4, sets.v4), (6, sets.v6)):
                addrs = [a for a in addresses if a.version == version]
                if not addrs:
                    continue
                data = nfnetlink.nft_add_elements(policy_nft.TABLE_NAME, set_name, addrs,
                                                  seq=self._take_seq(3), timeout_ms=timeout * 1000)
                try:
                    self._request(self.control, data, f"adding {name}'s addresses")
                except (NetwrapError, OSError) as exc:
                    self.errors.append(str(exc))
            debug(f"policy: {name} -> {', '.join(map(str, addresses))} for {timeout} s")

    # -- the flow log -------------------------------------------------------------------------

    def _flows_timeout(self) -> float | None:
        deadline = self.book.next_deadline() if self.book else None
        return None if deadline is None else deadline - time.time()

    def _flows_due(self) -> None:
        if self.book is not None:
            self._write(self.book.due(time.time()))

    def _write(self, records: list[dict]) -> None:
        if self._log is not None:
            for record in records:
                self._log.write(flowlog.dumps(record))

    def _recv_all(self, sock: socket.socket) -> Iterable[nfnetlink.Message]:
        while True:
            try:
                data = sock.recv(1 << 17)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped events: count, go on
                    self.lost_events += 1
                    continue
                raise
            try:
                yield from list(nfnetlink.iter_messages(data))
            except nfnetlink.NetlinkFormatError as exc:
                self.errors.append(f"bad netlink message: {exc}")

    def _on_events(self) -> None:
        assert self.book is not None and self.events is not None
        for msg in self._recv_all(self.events):
            try:
                event = nfnetlink.parse_ct_event(msg)
            except nfnetlink.NetlinkFormatError:
                self.lost_events += 1
                continue
            if event is not None:
                self._write(self.book.on_ct(event, time.time()))

    def _on_nflog(self) -> None:
        assert self.book is not None and self.nflog is not None
        for msg in self._recv_all(self.nflog):
            try:
                packet = nfnetlink.parse_nflog(msg)
            except nfnetlink.NetlinkFormatError:
                self.lost_events += 1
                continue
            if packet is not None:
                self._write(self.book.on_blocked(packet, time.time()))

    # -- the end ------------------------------------------------------------------------------

    def stop(self, deadline: float | None = None) -> None:
        """After the command: stop both threads by `deadline` (time.monotonic()),
        close every flow, write the rest, close everything. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if deadline is None:
            deadline = time.monotonic() + STOP_TIMEOUT
        flows_ended = self._flows is None or self._flows.stop(deadline)
        if not flows_ended:
            self.errors.append("the flow log's reader did not stop in time: the last flows are missing")
        if self.tracking and self.book is not None and self.control is not None and flows_ended:
            try:
                # Every flow still known to conntrack comes back as a destroy event.
                self._request(self.control, nfnetlink.ct_flush(seq=self._take_seq()), "flushing conntrack",
                              timeout=min(ACK_TIMEOUT, max(0.0, deadline - time.monotonic())))
            except (NetwrapError, OSError) as exc:
                self.errors.append(str(exc))
            if self.events is not None:
                self._on_events()
            if self.nflog is not None:
                self._on_nflog()
            self._write(self.book.close(time.time()))
        for error in dict.fromkeys(self.errors):
            sys.stderr.write(f"netwrap: warning: {error}\n")
        self._stack.close()

    # -- for --summary --------------------------------------------------------------------------

    def controls(self) -> list[str]:
        p = self.policy
        out = []
        if p.offline:
            out.append("offline (only the sandbox's own loopback)")
        if p.block_private:
            out.append("private ranges blocked")
        if p.block_metadata:
            out.append("cloud metadata blocked")
        if p.deny_rules:
            out.append("deny " + ", ".join(r.spec for r in p.deny_rules))
        if p.allow_rules:
            out.append("allow " + ", ".join(r.spec for r in p.allow_rules))
        if not p.offline:
            out.append(f"default {p.default}")
        if self.config.flow_log is not None:
            out.append(f"flow log {self.config.flow_log}")
        return out

    def flows_line(self) -> str | None:
        if self.book is None:
            return None
        line = f"{self.book.allowed} allowed, {self.book.blocked} blocked"
        if self.book.inbound:
            line += f" ({self.book.inbound} of the allowed inbound through --publish)"
        if self.lost_events:
            line += f" (the kernel dropped events {self.lost_events} times: counts are low)"
        return line
