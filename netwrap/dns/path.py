"""The command's one DNS path: every DNS flow of the sandbox through netwrap's proxy.

When the run forces a resolver (--dns), or its policy has hostname rules to
keep current or names to refuse (--dns-allowed-only), or it counts flows
(--flow-log, --summary), every DNS flow of
the command, UDP and TCP, IPv4 and IPv6, to any address, is taken over by
TPROXY in the sandbox (netwrap.dns.intercept) and answered through netwrap's
proxy (netwrap.dns.proxy_service), which asks from the host:
- the forced resolver, under --dns, whatever address and family the
  command used;
- the host's resolvers (its resolv.conf, loopback ones included) for a
  query to the backend's own DNS address;
- else the address the command asked.
So the backends' DNS quirks stop mattering, and every answer, over UDP or
TCP, to whichever server, teaches the policy its hostnames' addresses.

This needs nftables in the sandbox. Without it (tunrelay's TUN NAT path)
DNS goes through the backend as before: tunrelay's forwarder, hostnames
resolved at start only.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from netwrap.errors import NetwrapError

if TYPE_CHECKING:
    from netwrap.dns.proxy_service import DnsProxyService
    from netwrap.backends import NetworkInfo
    from netwrap.config import Config
    from netwrap.dns.proxy import Learn
    from netwrap.sandbox.calls import SandboxCalls
    from netwrap.sandbox.setup import SetupPlan

HOST_RESOLV_CONF = "/etc/resolv.conf"


def wanted(config: Config) -> bool:
    """Does this run take the command's DNS over (given nftables)?"""
    hostnames = config.policy is not None and bool(config.policy.hostnames)
    return (bool(config.dns) or hostnames or config.dns_allowed_only or config.flow_log is not None
            or bool(config.summary))


class DnsPath:
    """Build it with prepare() during setup; start() before the command; stop() after."""

    def __init__(self, *, service: DnsProxyService, ruleset: str, nft_path: str,
                 stack: contextlib.ExitStack) -> None:
        self.service = service
        self.ruleset = ruleset
        self.nft_path = nft_path
        self._stack = stack

    @classmethod
    def prepare(cls, config: Config, calls: SandboxCalls, network: NetworkInfo, *, nft: str,
                on_learn: Callable[[Learn], None] | None = None) -> DnsPath:
        # Imported here: a plain run asks wanted() only, and pays for none of this.
        from netwrap.dns import intercept
        from netwrap.dns.proxy_service import DnsProxyService, open_in_sandbox, raw_reply
        from netwrap.linux import rtnetlink, tproxy
        from netwrap.linux.hostfiles import host_resolvers, read_host_file

        stack = contextlib.ExitStack()
        try:
            sockets = open_in_sandbox(calls, stack)
            with calls.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                              socket.NETLINK_ROUTE) as nl:
                nl.settimeout(5.0)
                rtnl = rtnetlink.Rtnl(nl)
                # The local route below goes on lo, which no backend is bound
                # to bring up first (a plugin with no uplink does not).
                rtnl.request(lambda s: rtnetlink.set_link(1, up=True, seq=s), "bring lo up")
                families = (socket.AF_INET, socket.AF_INET6) if socket.AF_INET6 in sockets.udp else (socket.AF_INET,)
                tproxy.route_marked_to_lo(rtnl, mark=intercept.MARK, table=intercept.ROUTE_TABLE,
                                          priority=intercept.RULE_PRIORITY, families=families)
        except OSError as exc:
            stack.close()
            raise NetwrapError(f"cannot set up the DNS path in the sandbox: {exc.strerror or exc}") from None
        except BaseException:
            stack.close()
            raise
        v6 = socket.AF_INET6 in sockets.udp
        ports = intercept.Listeners(udp4=sockets.udp[socket.AF_INET].getsockname()[1],
                                    tcp4=sockets.tcp[socket.AF_INET].getsockname()[1],
                                    udp6=sockets.udp[socket.AF_INET6].getsockname()[1] if v6 else None,
                                    tcp6=sockets.tcp[socket.AF_INET6].getsockname()[1] if v6 else None)
        choose = functools.partial(intercept.choose_upstream, forced=tuple(config.dns),
                                   backend_dns=tuple(network.dns),
                                   host_resolvers=tuple(host_resolvers(read_host_file(HOST_RESOLV_CONF))))
        refuse = None
        if config.dns_allowed_only:  # only names the allow list names are asked (UDP; TCP DNS is refused)
            allowed = frozenset(config.policy.hostnames if config.policy is not None else ())
            refuse = lambda name: name not in allowed  # noqa: E731
        service = DnsProxyService(udp=sockets.udp, tcp=sockets.tcp, reply=raw_reply(sockets.raw), choose=choose,
                                  on_learn=on_learn or (lambda learned: None), refuse=refuse,
                                  device=config.outbound_interface.name if config.outbound_interface else None)
        return cls(service=service, ruleset=intercept.render_interception(ports), nft_path=nft, stack=stack)

    def merge(self, plan: SetupPlan) -> SetupPlan:
        """The front-end's SetupPlan with the interception added (one `nft -f` for all)."""
        return attrs.evolve(plan, nft_ruleset=(plan.nft_ruleset or "") + self.ruleset,
                            nft_path=plan.nft_path or self.nft_path)

    def start(self) -> None:
        self.service.start()

    def stop(self, deadline: float | None = None) -> bool:
        """Idempotent; False if the proxy's thread had to be abandoned."""
        try:
            return self.service.stop(deadline)
        finally:
            self._stack.close()
            for error in dict.fromkeys(self.service.errors):
                sys.stderr.write(f"netwrap: warning: {error}\n")
            self.service.errors.clear()
