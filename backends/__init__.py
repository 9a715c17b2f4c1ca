"""The backend layer: what gives the sandbox's network namespace connectivity.

A backend is a small class (the Backend protocol below) with:
  name, package (what a distro calls it), capabilities (a frozenset of the
  CAP_* names below), probe() -> Probe, and start(target, config, probe) -> Handle.
Everything a backend gets from the front-end comes through Target (and the
read-only Config): backends import only netwrap.errors, netwrap.config,
netwrap.linux.* and netwrap.__version__, never the front-end itself.

Backends are found through the entry-point group ``netwrap.backends``; the
ones shipped with netwrap are also known statically so that a run never pays
for scanning installed distributions unless it names a backend netwrap does
not ship. ``--backend auto`` tries AUTO_ORDER and takes the first available.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, Optional, Protocol, Union, runtime_checkable

import attrs

from netwrap.config import Tools
from netwrap.errors import NetwrapError, UsageError

if TYPE_CHECKING:  # types only: a backend never imports the front-end at run time
    from ipaddress import IPv4Address, IPv6Address

    from netwrap.config import Config
    from netwrap.sandbox.calls import SandboxCalls

ENTRY_POINT_GROUP = "netwrap.backends"

# Capability names a backend may declare; the front-end refuses a feature
# whose capability the chosen backend lacks, naming both.
CAP_IPV4 = "ipv4"
CAP_IPV6 = "ipv6"
CAP_TCP = "tcp"
CAP_UDP = "udp"
CAP_ICMP = "icmp"  # ICMP echo over IPv4
CAP_ICMP6 = "icmp6"  # ICMPv6 echo
CAP_PUBLISH = "publish"  # --publish of TCP ports
CAP_PUBLISH_UDP = "publish-udp"  # --publish of UDP ports, replies included
# Listening on the host's IPv6 addresses too (without it, a --publish with no
# HOST_IP listens on IPv4 only, and an IPv6 HOST_IP is refused).
CAP_PUBLISH_IPV6 = "publish-ipv6"
# A published connection reaches the sandbox from the client's own address
# (the server inside sees the real peer), not from the backend's gateway.
CAP_PUBLISH_KEEPS_PEER = "publish-keeps-peer"
# The conntrack mark bit of published connections a backend makes inside the
# sandbox itself (tunrelay): they arrive on lo, so the flow log knows them by
# this bit rather than by their interface.
PUBLISHED_CT_MARK = 0x00100000
CAP_OUTBOUND_INTERFACE = "outbound-interface"
CAP_HOST_LOOPBACK = "host-loopback"  # can open host loopback on request

BUILTIN: dict[str, str] = {
    "pasta": "netwrap.backends.pasta:PastaBackend",
    "slirp4netns": "netwrap.backends.slirp4netns:Slirp4netnsBackend",
    "tunrelay": "netwrap.backends.tunrelay.backend:TunrelayBackend",
}
AUTO_ORDER = ("pasta", "slirp4netns", "tunrelay")


@attrs.frozen(kw_only=True)
class Probe:
    """What a backend found out about itself on this machine."""

    available: bool
    version: str | None = None
    reason: str | None = None  # why not available
    fix: str | None = None  # what to do about it
    path: str | None = None
    options: frozenset[str] = frozenset()  # long options the binary accepts


@attrs.frozen(kw_only=True)
class Target:
    """The sandbox a backend attaches to."""

    pid: int  # host pid of a process inside the sandbox's user+net namespaces
    rootful: bool
    # An open fd of the sandbox's netns, owned by the caller. A helper given
    # it (as /proc/self/fd/N) needs no ptrace access to the holder process,
    # which a root helper that drops capabilities no longer has.
    netns_fd: int
    # Setup-time calls into the sandbox: open a TUN there, create sockets in
    # its netns, run nft/ip as its root. Valid until the backend is ready.
    calls: "SandboxCalls | None" = attrs.field(default=None, eq=False, repr=False)
    # The external programs this run found (nft, ip), looked up once.
    tools: Tools = Tools()
    # The run's network policy, for a backend whose own engine must judge each
    # new flow (tunrelay without nftables); None when the run has no policy.
    # Given what the backend set up, it returns the decision function.
    policy_decider: "Callable[[NetworkInfo], Decide] | None" = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen(kw_only=True)
class NetworkInfo:
    """What the backend set up inside, for resolv.conf, summaries and policy."""

    interface: str | None = None
    addresses: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    # CIDRs the backend uses only for its own plumbing on `interface` (tunrelay's
    # NAT path: fake peers the sandbox's kernel talks to): packets from or to
    # them are not the command's traffic, and the capture leaves them out.
    internal_networks: tuple[str, ...] = ()


class FlowDecision(Protocol):
    """What a backend reads of the front-end's verdict on one flow."""

    @property
    def allowed(self) -> bool: ...


# decide(protocol "tcp"/"udp"/"icmp", destination address, port or None for icmp)
Decide = Callable[[str, Union["IPv4Address", "IPv6Address"], Optional[int]], FlowDecision]


@runtime_checkable
class Handle(Protocol):
    """A started backend. Owned by the netwrap parent; stop() is idempotent."""

    pid: int | None
    # True when the backend's own engine judges the run's network policy
    # (nothing in the sandbox does): the front-end then sets up no nftables policy.
    enforces_policy: bool

    def wait_ready(self, timeout: float) -> NetworkInfo: ...

    def fileno(self) -> int | None:
        """An fd the main loop watches (the backend's output), or None."""

    def on_readable(self) -> None: ...

    def poll(self) -> int | None:
        """Exit status if the backend has ended, else None."""

    def diagnostics(self) -> str: ...

    def stop(self, timeout: float = 2.0) -> None: ...


@runtime_checkable
class Backend(Protocol):
    name: str
    package: str
    capabilities: frozenset[str]

    def probe(self) -> Probe: ...

    def start(self, target: Target, config: "Config", probe: Probe | None = None) -> Handle:
        """Attach to the sandbox; `probe` is what probe() found (probed again if None)."""


def _load(spec: str) -> type:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _entry_points() -> dict[str, object]:
    from importlib.metadata import entry_points  # ~35 ms: only when needed

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names(*, include_plugins: bool = True) -> list[str]:
    found = list(BUILTIN)
    if include_plugins:
        found += [n for n in _entry_points() if n not in BUILTIN]
    return found


def is_known(name: str) -> bool:
    return name == "auto" or name in BUILTIN or name in _entry_points()


def get(name: str) -> Backend:
    if name in BUILTIN:
        return _load(BUILTIN[name])()
    ep = _entry_points().get(name)
    if ep is None:
        known = ", ".join(["auto", *names()])
        raise UsageError(f"unknown backend {name!r} (known: {known})")
    return ep.load()()  # type: ignore[attr-defined]


def required_capabilities(config: "Config") -> dict[str, str]:
    """Capability -> the option that needs it, for this run's options."""
    needed: dict[str, str] = {}
    if config.allow_host_loopback:
        needed[CAP_HOST_LOOPBACK] = "--allow-host-loopback"
    if config.outbound_interface is not None:
        needed[CAP_OUTBOUND_INTERFACE] = f"--iface {config.outbound_interface.name}"
    for published in config.publish:
        needed.setdefault(CAP_PUBLISH, f"--publish {published.describe()}")
        if published.proto == "udp":
            needed.setdefault(CAP_PUBLISH_UDP, f"--publish {published.describe()}")
        if published.host_ip is not None and ":" in published.host_ip:
            needed.setdefault(CAP_PUBLISH_IPV6, f"--publish {published.describe()}")
    if any(":" in resolver for resolver in config.dns):
        needed[CAP_IPV6] = f"--dns {next(r for r in config.dns if ':' in r)}"
    return needed


def check_capabilities(backend: Backend, config: "Config") -> None:
    """Refuse, before anything starts, an option the backend cannot honour."""
    for capability, option in required_capabilities(config).items():
        if capability not in backend.capabilities:
            others = [n for n in BUILTIN if n != backend.name]
            raise NetwrapError(f"{option} needs {capability}, which backend {backend.name} lacks here"
                               + (f" (see 'netwrap backends'; try --backend {' or '.join(others)})" if others else ""))


def select(name: str) -> tuple[Backend, Probe]:
    """The backend to use for `name` ("auto" included), probed and available."""
    if name != "auto":
        backend = get(name)
        probe = backend.probe()
        if not probe.available:
            raise NetwrapError(f"backend {name} is not available: {probe.reason}" + (f"; {probe.fix}" if probe.fix else ""))
        return backend, probe
    reasons = []
    for candidate in AUTO_ORDER:
        if candidate not in BUILTIN:
            continue
        backend = get(candidate)
        probe = backend.probe()
        if probe.available:
            return backend, probe
        reasons.append(f"{candidate}: {probe.reason}")
    raise NetwrapError("no backend is available (" + "; ".join(reasons) + ")")
