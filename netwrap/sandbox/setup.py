"""The front-end every backend shares: what the sandbox's init sets up.

The parent decides (prepare): it renders resolv.conf, hosts and the nftables
ruleset from the config and the backend's NetworkInfo, writes the files into
a private scratch directory, and sends init a SetupPlan. Init applies it
(apply) as root of the sandbox, before the command exists. Once init has
bind-mounted the files the scratch directory can go: the mounts keep them.
"""

from __future__ import annotations

import os

import attrs

from netwrap.dns import files as dnsfiles
from netwrap.linux import syscalls
from netwrap.backends import NetworkInfo
from netwrap.config import Config
from netwrap.errors import NetwrapError
from netwrap.linux.commands import run
from netwrap.linux.hostfiles import read_host_file

HOST_RESOLV_CONF = "/etc/resolv.conf"
HOST_HOSTS = "/etc/hosts"


@attrs.frozen(kw_only=True)
class SetupPlan:
    # (file netwrap prepared, sandbox path it is mounted over)
    binds: tuple[tuple[str, str], ...] = ()
    nft_path: str | None = None
    nft_ruleset: str | None = None
    # (path under /proc/sys, value): per-netns sysctls init writes.
    sysctls: tuple[tuple[str, str], ...] = ()
    # What is in force, for --summary.
    resolvers: tuple[str, ...] = ()

    def to_message(self) -> dict:
        return {"binds": [list(b) for b in self.binds], "nft_path": self.nft_path, "nft_ruleset": self.nft_ruleset,
                "sysctls": [list(s) for s in self.sysctls]}

    @classmethod
    def from_message(cls, msg: dict) -> "SetupPlan":
        return cls(binds=tuple(tuple(b) for b in msg.get("binds", ())), nft_path=msg.get("nft_path"),
                   nft_ruleset=msg.get("nft_ruleset"), sysctls=tuple(tuple(s) for s in msg.get("sysctls", ())))


def policy_flags(config: Config) -> list[str]:
    """The network-policy flags of this run, named as the user typed them (netwrap.policy.runtime)."""
    return [name for name, on in (("--offline", config.offline), ("--block-private", config.block_private),
                                   ("--block-metadata", config.block_metadata), ("--allow", config.allow),
                                   ("--deny", config.deny), ("--default-policy", config.default_policy is not None),
                                   ("--flow-log", config.flow_log is not None),
                                   ("--dns-allowed-only", config.dns_allowed_only)) if on]


def check(config: Config, backend: str | None = None) -> str | None:
    """Refuse, before anything starts, what this machine cannot do; the nft path if needed.

    ``backend`` is the backend's name once chosen: without nftables, tunrelay
    judges every new flow in its own engine (its TUN NAT path sees every
    packet), so only the flow log, which reads conntrack, still needs nft.
    """
    policy = policy_flags(config)
    nft = config.tools.nft
    if policy and nft is None:
        if backend != "tunrelay":
            raise NetwrapError(f"{policy[0]} needs nftables to enforce the network policy in the sandbox; "
                               "install the 'nftables' package")
        if config.flow_log is not None:
            raise NetwrapError("--flow-log needs nftables (it reads the sandbox's conntrack); "
                               "install the 'nftables' package")
        if config.dns_allowed_only:
            raise NetwrapError("--dns-allowed-only needs nftables (it sends the sandbox's DNS through "
                               "netwrap's proxy); install the 'nftables' package")
    if not config.dns:
        return nft if policy else None
    if nft is None:
        raise NetwrapError("--dns needs nftables to send every DNS flow to the resolver; "
                           "install the 'nftables' package")
    return nft



def _write(scratch: str, name: str, text: str) -> str:
    path = os.path.join(scratch, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o644)  # the command may run as another user (--user)
    return path


def prepare(config: Config, network: NetworkInfo, scratch: str, *, backend: str, nft: str | None) -> SetupPlan:
    binds: list[tuple[str, str]] = []
    resolvers = list(config.dns) or list(network.dns)
    if resolvers:
        search, options = dnsfiles.host_resolv_settings(read_host_file(HOST_RESOLV_CONF))
        origin = "forced resolver (--dns)" if config.dns else f"the {backend} backend's DNS address"
        text = dnsfiles.render_resolv_conf(resolvers, search=search, options=options, origin=origin)
        binds.append((_write(scratch, "resolv.conf", text), HOST_RESOLV_CONF))
    if config.hosts_text is not None or config.add_hosts:
        base = config.hosts_text if config.hosts_text is not None else read_host_file(HOST_HOSTS)
        binds.append((_write(scratch, "hosts", dnsfiles.render_hosts(base, list(config.add_hosts))), HOST_HOSTS))
    # --dns itself is carried out by the DNS path (netwrap.dns.path).
    return SetupPlan(binds=tuple(binds), nft_path=nft, nft_ruleset=None, sysctls=(_ping_group_range(config),),
                     resolvers=tuple(resolvers))


def _ping_group_range(config: Config) -> tuple[str, str]:
    """Let the command's groups open ICMP echo sockets, so `ping` works unprivileged.

    A new netns starts with "1 0" (nobody), and the command holds no
    CAP_NET_RAW over the netns, so ping could use neither kind of socket.
    The range names gids as the netns owner's user namespace maps them:
    rootless that namespace maps only gid 0 (the caller's gid, which the
    command has), rootful every gid. Distributions set the same for the host.
    """
    return ("/proc/sys/net/ipv4/ping_group_range", "0 0" if not config.rootful else "0 2147483647")


def apply(plan: SetupPlan) -> None:
    """In the sandbox's init, as its root: mounts, then the firewall."""
    for source, target in plan.binds:
        # /etc/resolv.conf is often a symlink (systemd-resolved): cover the
        # file it points to, in this mount namespace only.
        real = os.path.realpath(target)
        if not os.path.isfile(real):
            raise NetwrapError(f"cannot replace {target}: {real} does not exist")
        syscalls.mount(source, real, None, syscalls.MS_BIND)
    for path, value in plan.sysctls:
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise NetwrapError(f"cannot set {path.removeprefix('/proc/sys/')} to {value!r}: {exc.strerror}") from None
    if plan.nft_ruleset:
        run([plan.nft_path or "nft", "-f", "-"], input=plan.nft_ruleset)
