"""The validated configuration of one netwrap run.

Built by the CLI (or the library API) once every flag has been checked; the
rest of netwrap only reads it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from netwrap.capture.spec import CaptureSpec
    from netwrap.linux.interfaces import Interface
    from netwrap.linux.userfiles import Identity, OutputFile
    from netwrap.policy.model import Policy


@attrs.frozen(kw_only=True)
class Tools:
    """Where the external programs netwrap drives are (None: not installed).

    Looked up once per run, when the Config is built, and passed down: every
    part of netwrap then agrees on whether nftables is there, and which one.
    """

    nft: str | None = None
    ip: str | None = None

    @classmethod
    def find(cls) -> "Tools":
        """Looked up where netwrap.linux.commands says (root: the system PATH or --helper-path)."""
        from netwrap.linux.commands import search_path

        return _find_tools(tuple(search_path()))


@functools.cache
def _find_tools(directories: tuple[str, ...]) -> Tools:
    # Keyed by the directories searched: --helper-path set later looks again.
    from netwrap.linux.commands import which

    return Tools(nft=which("nft"), ip=which("ip"))


@attrs.frozen(kw_only=True)
class RunAs:
    """Who the command runs as, seen from the host."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    name: str | None = None


@attrs.frozen(kw_only=True)
class PublishedPort:
    """One --publish: a host port whose connections reach a port of the sandbox."""

    proto: str  # "tcp" or "udp"
    # The host address to listen on (IPv4 or IPv6, no brackets); None: every
    # host address of both families.
    host_ip: str | None = None
    host_port: int
    sandbox_port: int

    def describe(self) -> str:
        """The spec as the user would write it, for messages."""
        host = "" if self.host_ip is None else (f"[{self.host_ip}]:" if ":" in self.host_ip else f"{self.host_ip}:")
        return f"{host}{self.host_port}:{self.sandbox_port}/{self.proto}"


@attrs.frozen(kw_only=True)
class Config:
    command: tuple[str, ...]
    backend: str = "auto"
    allow_host_loopback: bool = False
    # Rootless: run the command as root of the sandbox's user namespace
    # (capabilities over the netns) instead of nesting it under the caller's ids.
    as_root: bool = False
    # Rootful only: drop to this user for the command.
    user: RunAs | None = None
    # Forced resolvers (--dns): resolv.conf names them and every port-53
    # flow of the tree is sent to them.
    dns: tuple[str, ...] = ()
    # --hosts-file content, read (and so checked) before anything starts.
    hosts_text: str | None = None
    hosts_file: str | None = None
    add_hosts: tuple[tuple[str, str], ...] = ()
    # Network policy (netwrap.policy.runtime): --allow/--deny specs as typed (the
    # CLI checked them), --default-policy, the presets, --flow-log's path.
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    default_policy: str | None = None
    offline: bool = False
    block_private: bool = False
    block_metadata: bool = False
    flow_log: str | None = None
    # --dns-allowed-only: the DNS proxy answers REFUSED for every name no --allow names.
    dns_allowed_only: bool = False
    # The parsed --allow/--deny/--default-policy/presets (netwrap.policy.model.Policy),
    # built once by the CLI when any of them, --flow-log or --summary is given; the
    # backend's own addresses and resolvers join it at run time (Policy.with_network).
    policy: "Policy | None" = attrs.field(default=None, eq=False)
    tools: Tools = Tools()
    # --publish: host ports opened into the sandbox (checked free when parsed).
    publish: tuple[PublishedPort, ...] = ()
    # -c/-C, or None for no capture.
    capture: CaptureSpec | None = None
    # Output files (--flow-log, every file of -c), opened while the flags were
    # checked (netwrap.linux.userfiles) and written through these fds.
    outputs: tuple[OutputFile, ...] = ()
    # Whom those outputs were opened for (None: netwrap's own user).
    output_identity: Identity | None = None
    summary: bool = False
    # -i/--iface: the host interface the command's direct traffic leaves by,
    # with its addresses as found when the flags were checked (it has IPv4).
    outbound_interface: Interface | None = None
    # tunrelay's TCP path: "auto" (tproxy when nftables allows, else nat), "tproxy" or "nat".
    tunrelay_tcp: str = "auto"
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose
    rootful: bool
    caller_uid: int
    caller_gid: int
