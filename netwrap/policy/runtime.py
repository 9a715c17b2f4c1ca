"""The network policy's I/O: set it up in the sandbox, keep its name sets current, log flows.

prepare() runs in the parent during setup, while init still serves sandbox
calls (netwrap.sandbox.calls). It builds the Policy from the flags and what
the backend set up (its resolver, the addresses through which it reaches the
host), resolves --allow hostnames through the host's resolvers, asks init
for every socket needed later (all of them live in the sandbox's network
namespace) and renders the nftables ruleset that init loads with the rest of
the front-end. start() then runs one thread until finish().

Keeping hostname sets in sync with what the sandbox's DNS answers
------------------------------------------------------------------
A name resolved at start can answer differently later (round robin, CDNs,
short TTLs). So the sandbox's UDP queries to its resolver are redirected by
nftables to a small proxy served by this parent: it passes each query on to
the same resolver, through the same backend, and when the answer names an
allowed host it adds the addresses to that host's sets *before* handing the
answer back. No connection can race the update, because the command only
learns the address once the set holds it.

The sets are updated with nf_tables netlink messages that the parent sends
on a NETLINK_NETFILTER socket init created in the sandbox during setup.
The kernel wants CAP_NET_ADMIN over the socket's netns from whoever opened
the socket (init, root there) and from the sender: rootless, the parent owns
the sandbox's user namespace and so holds every capability in it; rootful it
is root. The alternative, init serving calls for the whole run, would leave
a request channel open in the command's own ancestor and put a process
switch plus an `nft` exec on the path of every DNS answer. With this design
init does nothing once the command has started.

What is not covered: DNS over TCP, and queries the command sends to other
servers an --allow rule opens, are not proxied, so their answers update
nothing (names resolved at start stay allowed). /etc/hosts and --add-host
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

import errno
import functools
import ipaddress
import os
import random
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Optional, TextIO

from netwrap.dns import message as dnsmsg
from netwrap.policy import flowlog
from netwrap.linux import nfnetlink
from netwrap.policy import nft as policy_nft
from netwrap.errors import NetwrapError
from netwrap.linux.commands import debug
from netwrap.sandbox.setup import policy_flags
from netwrap.linux.hostfiles import ipv6_by_interface, local_ipv4, read_host_file
from netwrap.policy.model import Decision, IPAddress, Policy, normalize_address, normalize_hostname_key

if TYPE_CHECKING:
    from netwrap.backends import NetworkInfo
    from netwrap.config import Config
    from netwrap.sandbox.calls import SandboxCalls
    from netwrap.sandbox.setup import SetupPlan

NFLOG_GROUP = 0x4E57  # the sandbox's own netns: no other user of the group
RCVBUF = 4 << 20
ACK_TIMEOUT = 2.0
PENDING_TIMEOUT = 10.0  # a query without an answer is forgotten after this
MAX_PENDING = 4096
SYSCTL_ACCT = "/proc/sys/net/netfilter/nf_conntrack_acct"
SYSCTL_TIMESTAMP = "/proc/sys/net/netfilter/nf_conntrack_timestamp"


def build(config: Config, *, host_addresses: Iterable[str] = (), dns_servers: Iterable[str] = ()) -> Policy:
    """The Policy of a run: the one the CLI parsed, with what the backend set up."""
    if config.policy is None:
        raise NetwrapError("the run's network policy was not parsed (netwrap.cli.options builds Config.policy)")
    return config.policy.with_network(host_addresses=host_addresses, dns_servers=dns_servers)


def start_time_decide(config: Config, network: NetworkInfo) -> Callable[..., Decision]:
    """The run's Policy.decide for an engine that judges each new flow itself
    (tunrelay without nftables), on the addresses the child sends to.

    --allow hostnames are resolved once, now: without nftables there is no
    DNS proxy to add the addresses the sandbox's DNS answers later.
    """
    resolvers = list(config.dns) if config.dns else list(network.dns)
    policy = build(config, dns_servers=resolvers, host_addresses=host_addresses(network))
    resolved = resolve_at_start(policy.hostnames, _hosts_texts(config)) if policy.hostnames else {}
    return functools.partial(policy.decide, resolved_names=resolved)


# --- where the host is ---------------------------------------------------------------------------


def host_addresses(network: NetworkInfo) -> list[str]:
    """Every address through which the backend would reach the host itself (--block-private).

    The host's own addresses (a backend connects to them from the host), the
    backend's gateways (slirp4netns maps its gateway to the host), and the
    host's default gateways: pasta copies them into the sandbox and maps them
    to the host's loopback when that is open; closed, blocking the host's
    router as well costs nothing and keeps the rule simple.
    """
    found = [*_local_v4(), *_local_v6(), *network.gateways, *_default_gateways()]
    out: dict[str, None] = {}
    for text in found:
        try:
            addr = normalize_address(text.split("/")[0])
        except ValueError:
            continue
        if not addr.is_loopback:
            out[str(addr)] = None
    return list(out)



def _local_v4() -> list[str]:
    return local_ipv4(read_host_file("/proc/net/fib_trie"))


def _local_v6() -> list[str]:
    return [str(ipaddress.IPv6Address(a)) for a, _ in ipv6_by_interface(read_host_file("/proc/net/if_inet6"))]


def _default_gateways() -> list[str]:
    out = []
    for line in read_host_file("/proc/net/route").splitlines()[1:]:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
            out.append(str(ipaddress.IPv4Address(bytes.fromhex(fields[2])[::-1])))
    for line in read_host_file("/proc/net/ipv6_route").splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[0] == "0" * 32 and fields[1] == "00" and fields[4] != "0" * 32:
            out.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[4]))))
    return out


# --- names at start ------------------------------------------------------------------------------


def resolve_at_start(names: Iterable[str], hosts_texts: Iterable[str] = ()) -> dict[str, set[IPAddress]]:
    """Each allowed hostname's addresses now: the host's resolvers (as the
    sandbox's DNS forwards to them), plus hosts-file entries the sandbox sees."""
    result: dict[str, set[IPAddress]] = {}
    wanted = list(names)
    for name in wanted:
        found: set[IPAddress] = set()
        try:
            for *_, sockaddr in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM):
                found.add(normalize_address(sockaddr[0].split("%")[0]))
        except (socket.gaierror, UnicodeError, ValueError) as exc:
            debug(f"--allow {name}: not resolved at start ({exc})")
        result[name] = found
    for text in hosts_texts:
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            try:
                addr = normalize_address(fields[0].split("%")[0])
            except ValueError:
                continue
            for alias in fields[1:]:
                key = normalize_hostname_key(alias)
                if key in result:
                    result[key].add(addr)
    return result


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


def _hosts_texts(config: Config) -> list[str]:
    texts = []
    if config.hosts_text is not None:
        texts.append(config.hosts_text)
    if config.add_hosts:
        texts.append("".join(f"{ip} {name}\n" for name, ip in config.add_hosts))
    return texts


# --- the engine ------------------------------------------------------------------------------------


class _Proxy:
    """One resolver's proxy: a listener on the sandbox's loopback, an upstream to the resolver."""

    def __init__(self, resolver: IPAddress, listen: socket.socket, upstream: socket.socket) -> None:
        self.resolver = resolver
        self.listen = listen
        self.upstream = upstream
        self.port = listen.getsockname()[1]
        self.address = (str(resolver), 53)


class PolicyEngine:
    """Everything the policy needs after setup. Build it with prepare()."""

    def __init__(self, *, config: Config, policy: Policy, tracking: bool, nft_path: str) -> None:
        self.config = config
        self.policy = policy
        self.tracking = tracking
        self.nft_path = nft_path
        self.ruleset = ""
        self.resolved: dict[str, set[IPAddress]] = {}
        self.sets = policy_nft.name_sets(policy)
        self.book = flowlog.FlowBook(policy_nft.verdict_tags(policy)) if tracking else None
        self.control: Optional[socket.socket] = None  # nf_tables updates, conntrack flush
        self.events: Optional[socket.socket] = None  # conntrack events
        self.nflog: Optional[socket.socket] = None  # refused packets
        self.proxies: list[_Proxy] = []
        self.lost_events = 0
        self.errors: list[str] = []
        self._pending: dict[int, tuple[_Proxy, Any, int, float]] = {}
        self._next_id = random.randrange(1 << 16)
        self._seq = 1
        self._log = None
        self._thread: Optional[threading.Thread] = None
        self._wake_r, self._wake_w = -1, -1
        self._finished = False

    # -- setup ----------------------------------------------------------------------------------

    @classmethod
    def prepare(cls, config: Config, calls: SandboxCalls, network: NetworkInfo, *, nft: Optional[str]) -> Optional["PolicyEngine"]:
        """None when nothing is to be enforced or counted."""
        wanted = bool(policy_flags(config))
        tracking = config.flow_log is not None or config.summary
        nft = nft or config.tools.nft
        if not wanted and not (tracking and nft):
            return None  # --summary alone without nftables: no counts, and no error
        if nft is None:  # frontend.check refused this already; a library caller may not have
            raise NetwrapError("the network policy needs nftables; install the 'nftables' package")
        resolvers = list(config.dns) if config.dns else list(network.dns)
        policy = build(config, dns_servers=resolvers,
                       host_addresses=host_addresses(network))
        engine = cls(config=config, policy=policy, tracking=tracking, nft_path=nft)
        try:
            engine._setup(calls, resolvers, forced=bool(config.dns))
        except OSError as exc:
            engine.close()
            raise NetwrapError(f"cannot set up the network policy: {exc.strerror or exc}") from None
        except BaseException:
            engine.close()
            raise
        return engine

    def _sandbox_netlink(self, calls: SandboxCalls, groups: int = 0) -> socket.socket:
        s = calls.socket(socket.AF_NETLINK, socket.SOCK_RAW, nfnetlink.NETLINK_NETFILTER, bind=(0, groups))
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass
        return s

    def _setup(self, calls: SandboxCalls, resolvers: list[str], *, forced: bool) -> None:
        policy = self.policy
        if policy.hostnames or self.tracking:
            self.control = self._sandbox_netlink(calls)
            self.control.settimeout(ACK_TIMEOUT)
        redirects: list[policy_nft.DnsRedirect] = []
        if policy.hostnames:
            self.resolved = resolve_at_start(policy.hostnames, _hosts_texts(self.config))
            seen_family: set[int] = set()
            for text in resolvers:
                resolver = normalize_address(text)
                if forced and resolver.version in seen_family:
                    continue  # DNS forcing sends a family's DNS to its first resolver only
                seen_family.add(resolver.version)
                proxy = self._make_proxy(calls, resolver)
                self.proxies.append(proxy)
                redirects.append(policy_nft.DnsRedirect(version=resolver.version, port=proxy.port,
                                                        resolver=None if forced else resolver))
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
            flow_log_group=NFLOG_GROUP if self.tracking else None, dns_proxy=redirects)
        if self.config.flow_log is not None:
            try:
                self._log = _open_flow_log(self.config)
            except OSError as exc:
                raise NetwrapError(f"--flow-log {self.config.flow_log!r}: {exc.strerror}") from None

    def _make_proxy(self, calls: SandboxCalls, resolver: IPAddress) -> _Proxy:
        family = socket.AF_INET if resolver.version == 4 else socket.AF_INET6
        loopback = "127.0.0.1" if resolver.version == 4 else "::1"
        listen = calls.socket(family, socket.SOCK_DGRAM, bind=(loopback, 0))
        upstream = calls.socket(family, socket.SOCK_DGRAM,
                                options=[(socket.SOL_SOCKET, socket.SO_MARK, policy_nft.PROXY_MARK)])
        # Not connected: the backend may add its routes only after it is ready.
        listen.setblocking(False)
        upstream.setblocking(False)
        return _Proxy(resolver, listen, upstream)

    def _take_seq(self, n: int = 1) -> int:
        seq = self._seq
        self._seq += n
        return seq

    def _request(self, sock: socket.socket, data: bytes, what: str) -> None:
        """Send a request and wait for every ack it asked for; NetwrapError on refusal."""
        expected = 0
        for msg in nfnetlink.iter_messages(data):
            if msg.flags & nfnetlink.NLM_F_ACK:
                expected += 1
        sock.send(data)
        deadline = time.monotonic() + ACK_TIMEOUT
        while expected:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                reply = sock.recv(65536)
            except socket.timeout:
                raise NetwrapError(f"{what}: no answer from the kernel") from None
            finally:
                sock.settimeout(None if sock is not self.control else ACK_TIMEOUT)
            for msg in nfnetlink.iter_messages(reply):
                if msg.type == nfnetlink.NLMSG_ERROR:
                    expected -= 1
                    code = nfnetlink.error_code(msg)
                    if code:
                        raise NetwrapError(f"{what}: {os.strerror(code)}")

    def merge(self, plan: SetupPlan) -> SetupPlan:
        """The front-end's SetupPlan with this ruleset added (one `nft -f` for both)."""
        import attrs

        ruleset = (plan.nft_ruleset or "") + self.ruleset
        return attrs.evolve(plan, nft_ruleset=ruleset, nft_path=plan.nft_path or self.nft_path)

    # -- running --------------------------------------------------------------------------------

    def start(self) -> None:
        if not (self.tracking or self.proxies):
            return
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="netwrap-policy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug here must not take the run down with it
            self.errors.append(f"policy engine stopped: {type(exc).__name__}: {exc}")

    def _loop(self) -> None:
        handlers: dict[int, Any] = {self._wake_r: None}
        if self.events is not None:
            handlers[self.events.fileno()] = self._on_events
        if self.nflog is not None:
            handlers[self.nflog.fileno()] = self._on_nflog
        for proxy in self.proxies:
            handlers[proxy.listen.fileno()] = lambda p=proxy: self._on_query(p)
            handlers[proxy.upstream.fileno()] = lambda p=proxy: self._on_answer(p)
        while True:
            timeout = None
            deadline = self.book.next_deadline() if self.book else None
            if deadline is not None:
                timeout = max(0.0, deadline - time.time())
            if self._pending:
                timeout = min(timeout if timeout is not None else PENDING_TIMEOUT, 1.0)
            readable, _, _ = select.select(list(handlers), [], [], timeout)
            for fd in readable:
                if fd == self._wake_r:
                    return
                handlers[fd]()
            now = time.time()
            if self.book is not None:
                self._write(self.book.due(now))
            if self._pending:
                for ident in [i for i, p in self._pending.items() if p[3] < time.monotonic()]:
                    del self._pending[ident]

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

    # -- the DNS proxy ------------------------------------------------------------------------

    def _on_query(self, proxy: _Proxy) -> None:
        while True:
            try:
                query, client = proxy.listen.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not dnsmsg.is_query(query):
                continue
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
            ident = self._new_id()
            self._pending[ident] = (proxy, client, dnsmsg.message_id(query), time.monotonic() + PENDING_TIMEOUT)
            try:
                proxy.upstream.sendto(dnsmsg.with_id(query, ident), proxy.address)
            except OSError:
                # The resolver cannot be reached: say so now rather than let the client time out.
                del self._pending[ident]
                reply = dnsmsg.servfail(query)
                if reply is not None:
                    try:
                        proxy.listen.sendto(reply, client)
                    except OSError:
                        pass

    def _new_id(self) -> int:
        for _ in range(1 << 16):
            self._next_id = (self._next_id + 1) & 0xFFFF
            if self._next_id not in self._pending:
                return self._next_id
        raise RuntimeError("no free DNS id")  # MAX_PENDING keeps this unreachable

    def _on_answer(self, proxy: _Proxy) -> None:
        while True:
            try:
                answer, sender = proxy.upstream.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP unreachable from the resolver; the client times out as usual
            if (sender[0].split("%")[0], sender[1]) != proxy.address:
                continue  # only the resolver answers
            try:
                ident = dnsmsg.message_id(answer)
            except dnsmsg.DNSFormatError:
                continue
            pending = self._pending.get(ident)
            if pending is None or pending[0] is not proxy:
                continue  # late or forged: not ours to pass on
            del self._pending[ident]
            _, client, original_id, _ = pending
            try:
                self._learn(dnsmsg.parse_answer(answer))
            except dnsmsg.DNSFormatError:
                pass  # nothing to learn from it; the client judges it
            try:
                proxy.listen.sendto(dnsmsg.with_id(answer, original_id), client)
            except OSError:
                pass

    def _learn(self, answer: dnsmsg.Answer) -> None:
        """Add the answer's addresses for allowed hostnames to their sets."""
        for name in answer.chain():
            if name not in self.sets:
                continue
            known = self.resolved.setdefault(name, set())
            new = [normalize_address(a) for a in answer.addresses_of(name)]
            new = [a for a in dict.fromkeys(new) if a not in known]
            if not new:
                continue
            sets = self.sets[name]
            for version, set_name in ((4, sets.v4), (6, sets.v6)):
                addrs = [a for a in new if a.version == version]
                if not addrs:
                    continue
                data = nfnetlink.nft_add_elements(policy_nft.TABLE_NAME, set_name, addrs,
                                                  seq=self._take_seq(3))
                try:
                    self._request(self.control, data, f"adding {name}'s addresses")
                except (NetwrapError, OSError) as exc:
                    self.errors.append(str(exc))
                    continue
                known.update(addrs)
            debug(f"policy: {name} -> {', '.join(map(str, new))}")

    # -- the end ------------------------------------------------------------------------------

    def finish(self) -> None:
        """After the command: stop the thread, close every flow, write the rest. Idempotent."""
        if self._finished:
            return
        self._finished = True
        if self._thread is not None:
            os.write(self._wake_w, b"x")
            self._thread.join(5.0)
        if self.tracking and self.book is not None and self.control is not None:
            try:
                # Every flow still known to conntrack comes back as a destroy event.
                self._request(self.control, nfnetlink.ct_flush(seq=self._take_seq()), "flushing conntrack")
            except (NetwrapError, OSError) as exc:
                self.errors.append(str(exc))
            if self.events is not None:
                self._on_events()
            if self.nflog is not None:
                self._on_nflog()
            self._write(self.book.close(time.time()))
        for error in dict.fromkeys(self.errors):
            sys.stderr.write(f"netwrap: warning: {error}\n")
        self.close()

    def close(self) -> None:
        for s in (self.control, self.events, self.nflog):
            if s is not None:
                s.close()
        for proxy in self.proxies:
            proxy.listen.close()
            proxy.upstream.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self._log is not None:
            self._log.close()
            self._log = None

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

    def flows_line(self) -> Optional[str]:
        if self.book is None:
            return None
        line = f"{self.book.allowed} allowed, {self.book.blocked} blocked"
        if self.lost_events:
            line += f" (the kernel dropped events {self.lost_events} times: counts are low)"
        return line
