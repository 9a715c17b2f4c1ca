"""The command line of a run: every option parsed and checked into a Config.

Everything the user typed is checked here, before anything starts: a bad
flag, value or file is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, NoReturn, Sequence

from netwrap import __version__
from netwrap.errors import UsageError

if TYPE_CHECKING:
    from netwrap.capture.spec import CaptureSpec
    from netwrap.linux.userfiles import Identity, OutputFile

DESCRIPTION = """\
Run COMMAND and everything it starts in a network namespace of its own,
connected through a backend (pasta, slirp4netns or the built-in tunrelay).

Rootless by default: the command runs under your own uid and gid in a nested
user namespace, so it cannot change the sandbox's firewall, routes or links.

other commands:
  netwrap backends    list backends: available or not and why, version, capabilities
  netwrap doctor      check this machine (user namespaces, /dev/net/tun, backends, nftables)
"""

EPILOG = """\
exit status: the command's own; 128+N if a signal N ended it; 125 if netwrap
failed; 126 if COMMAND is not executable; 127 if it is not found; 2 for bad
usage (nothing is started).
"""


POLICY_HELP = """\
Enforced by nftables in the sandbox, the same over every backend (tunrelay
without nftables: by its own engine, --allow hostnames resolved at start only,
no --flow-log); the command cannot lift it (unless --as-root). A refused TCP
connect fails at once (connection refused), refused UDP and ICMP get an ICMP
error.
SPEC: [tcp://|udp://|icmp://]HOST[:PORTS] (tcp:// if none); HOST is an IP,
a CIDR, [IPv6] or [IPv6/len] when ports follow, a hostname (--allow only) or *;
PORTS: 80,443,8000-8080 or *. Examples: 93.184.215.14:80,
udp://198.51.100.53:53, '[2001:db8::/32]:443', 'icmp://*', :443."""


# netwrap.linux.commands.SYSTEM_PATH, written out: --help does not import
# that module (ctypes, socket); a unit test keeps the two equal.
SYSTEM_PATH_TEXT = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="netwrap", usage="netwrap [OPTIONS] [--] COMMAND [ARGS...]",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"netwrap {__version__}")
    p.add_argument("--backend", default="auto", metavar="NAME",
                   help="auto (default: pasta, then slirp4netns, then tunrelay) or a backend from 'netwrap backends'")
    p.add_argument("--allow-host-loopback", action="store_true",
                   help="let the sandbox reach services on the host's loopback (closed by default)")
    p.add_argument("-d", "--dns", action="append", default=[], metavar="IP",
                   help="use this resolver (IPv4 or IPv6; repeatable): resolv.conf names it and every "
                        "DNS flow of the command, UDP and TCP, to any address goes to it")
    p.add_argument("--hosts-file", metavar="FILE", help="the sandbox's /etc/hosts (the host's file is untouched)")
    p.add_argument("--add-host", action="append", default=[], metavar="NAME:IP",
                   help="add a hosts entry (repeatable; IPv4 or IPv6)")
    p.add_argument("-i", "--iface", metavar="IFACE",
                   help="the command's direct traffic leaves the host through this interface (it needs an "
                        "IPv4 address; without an IPv6 one the command's IPv6 fails rather than leave elsewhere)")
    p.add_argument("--as-root", action="store_true",
                   help="run the command as root of the sandbox, with capabilities over its network: "
                        "it can then change or remove netwrap's controls (not tamper-proof)")
    p.add_argument("--user", metavar="NAME",
                   help="when netwrap runs as root: run the command as this user")
    policy = p.add_argument_group("network policy", POLICY_HELP)
    policy.add_argument("--offline", action="store_true",
                        help="nothing but the sandbox's own loopback (DNS fails at once too)")
    policy.add_argument("--block-private", action="store_true",
                        help="refuse RFC 1918, 100.64.0.0/10, 169.254.0.0/16, fc00::/7, fe80::/10 and every address "
                             "through which the backend reaches the host")
    policy.add_argument("--block-metadata", action="store_true",
                        help="refuse cloud metadata endpoints (169.254.169.254, fd00:ec2::254, 100.100.100.200), "
                             "whatever name leads there")
    policy.add_argument("--allow", action="append", default=[], metavar="SPEC",
                        help="allow matching flows (repeatable); any --allow makes the default deny")
    policy.add_argument("--deny", action="append", default=[], metavar="SPEC",
                        help="refuse matching flows (repeatable; wins over --allow)")
    policy.add_argument("--default-policy", metavar="{allow,deny}",
                        help="for flows no rule matches (default: deny if any --allow, else allow)")
    policy.add_argument("--dns-allowed-only", action="store_true",
                        help="answer DNS queries only for hostnames an --allow names; others get REFUSED and "
                             "never reach a resolver (without this, any name can be asked, and a name can "
                             "carry data out)")
    policy.add_argument("--flow-log", metavar="FILE",
                        help="write one JSON line per flow: times, protocol, addresses and ports, verdict, the "
                             "rule or preset that decided, bytes each way")
    p.add_argument("--publish", action="append", default=[], metavar="[HOST_IP:]HOST_PORT:SANDBOX_PORT[/tcp|/udp]",
                   help="accept connections on a host port and pass them to a port of the sandbox (repeatable; "
                        "tcp if no protocol; HOST_IP is IPv4 or [IPv6], none: every host address, IPv4 only on "
                        "slirp4netns). A published "
                        "flow and its replies pass whatever --offline, --block-private and --allow say: those "
                        "judge the command's own outbound flows")
    p.add_argument("-c", "--capture", metavar="FILE",
                   help="write the command's packets to FILE (pcapng, for Wireshark/tshark)")
    p.add_argument("-C", "--capture-point", choices=("child", "egress", "wire-egress", "both"), metavar="POINT",
                   help="what -c captures: child (default: what the command sent and received), egress (the "
                        "host-side flows the backend opened, synthesised), wire-egress (the host's interfaces "
                        "filtered to those flows; needs CAP_NET_RAW), both (FILE.child.pcapng and "
                        "FILE.egress.pcapng)")
    p.add_argument("--tunrelay-tcp", choices=("auto", "tproxy", "nat"), default="auto", metavar="PATH",
                   help="tunrelay backend: how TCP is relayed: tproxy (nftables TPROXY, bytes spliced kernel to "
                        "kernel), nat (packets rewritten on the TUN, no nftables needed) or auto (default: "
                        "tproxy when nftables allows it, else nat)")
    p.add_argument("--summary", action="store_true",
                   help="after the command, print a short report on stderr")
    p.add_argument("--helper-path", metavar="DIR[:DIR...]",
                   help="look up helper programs (pasta, slirp4netns, nft, ip) in these directories only. "
                        "Default: your PATH; as root the system PATH (" + SYSTEM_PATH_TEXT + "), never "
                        "the caller's PATH, and each DIR must then be root's alone (not writable by others)")
    p.add_argument("--doctor", action="store_true", help="same as 'netwrap doctor'")
    p.add_argument("-v", "--verbose", action="count", default=0, help="say more (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="the command to run, with its arguments")
    return p


def parse(argv: Sequence[str]):
    """The validated Config for a run, or a subcommand name."""
    args = build_parser().parse_args(list(argv))
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    use_helper_path(args.helper_path)
    if args.doctor:
        return "doctor"
    if not command:
        raise UsageError("no command given (usage: netwrap [OPTIONS] [--] COMMAND [ARGS...])")

    from netwrap import backends
    from netwrap.config import Config, Tools

    if not backends.is_known(args.backend):
        known = ", ".join(["auto", *backends.names()])
        raise UsageError(f"unknown backend {args.backend!r} (known: {known})")
    rootful = os.geteuid() == 0
    if args.user is not None and not rootful:
        raise UsageError("--user needs netwrap to run as root (rootless, the command always runs as you)")
    if args.user is not None and args.as_root:
        raise UsageError("--user and --as-root exclude each other")
    if args.quiet and args.verbose:
        raise UsageError("--quiet and --verbose exclude each other")
    from netwrap.dns import files as dnsfiles

    from netwrap.linux import userfiles

    run_as = _run_as(args.user) if args.user is not None else None
    user = userfiles.Identity(uid=run_as.uid, gid=run_as.gid, groups=run_as.groups) if run_as else None
    dns = tuple(dnsfiles.parse_dns(v) for v in args.dns)
    add_hosts = tuple(dnsfiles.parse_add_host(v) for v in args.add_host)
    hosts_text = (_read_hosts_file(args.hosts_file, userfiles.input_identity(user))
                  if args.hosts_file is not None else None)
    capture = None
    if args.capture is not None or args.capture_point is not None:
        from netwrap.capture.spec import parse_capture

        capture = parse_capture(args.capture, args.capture_point)
    outbound_interface = _outbound_interface(args.iface) if args.iface is not None else None
    published = _publish(args.publish, rootful=rootful)
    policy = _policy(args)
    # Opened last, once every other check passed, and kept open for the run:
    # nothing can be swapped in between a check and the open.
    writer = userfiles.output_identity(user)
    outputs = _open_outputs(capture, args.flow_log, writer)
    return Config(
        command=tuple(command),
        dns=dns,
        hosts_file=args.hosts_file,
        hosts_text=hosts_text,
        add_hosts=add_hosts,
        capture=capture,
        backend=args.backend,
        allow_host_loopback=args.allow_host_loopback,
        as_root=args.as_root,
        user=run_as,
        summary=args.summary,
        tunrelay_tcp=args.tunrelay_tcp,
        outbound_interface=outbound_interface,
        publish=published,
        **policy,
        tools=Tools.find(),
        outputs=outputs,
        output_identity=writer,
        verbosity=-1 if args.quiet else args.verbose,
        rootful=rootful,
        caller_uid=os.getuid(),
        caller_gid=os.getgid(),
    )


def use_helper_path(text: str | None) -> None:
    """Check --helper-path (exit 2 when refused) and make every later lookup use it."""
    from netwrap.linux import commands

    if text is not None:
        commands.configure_helper_path(commands.parse_helper_path(text, as_root=os.geteuid() == 0))


def _publish(specs: list[str], *, rootful: bool) -> tuple:
    """Every --publish parsed, and its host port tried (exit 2 naming the port)."""
    if not specs:
        return ()
    from netwrap.cli.publish import check_host_port, check_unique, parse_publish

    published = tuple(parse_publish(spec) for spec in specs)
    check_unique(published)
    for p in published:
        check_host_port(p, rootful=rootful)
    return published


def _policy(args: argparse.Namespace) -> dict:
    """The policy fields of the Config, every spec checked (exit 2 quoting the bad one)."""
    fields = dict(allow=tuple(args.allow), deny=tuple(args.deny), default_policy=args.default_policy,
                  offline=args.offline, block_private=args.block_private, block_metadata=args.block_metadata,
                  flow_log=args.flow_log, dns_allowed_only=args.dns_allowed_only)
    if args.dns_allowed_only and not args.allow:
        raise UsageError("--dns-allowed-only needs an allow list (--allow): it answers only the names it names")
    if args.dns_allowed_only and args.offline:
        raise UsageError("--dns-allowed-only and --offline exclude each other: offline, no DNS leaves at all")
    if args.block_private and args.allow_host_loopback:
        # pasta serves host loopback through the sandbox's own loopback, which no rule can tell apart.
        raise UsageError("--block-private cannot be combined with --allow-host-loopback: "
                         "one closes every way to the host, the other opens one")
    if (args.allow or args.deny or args.default_policy is not None or args.offline or args.block_private
            or args.block_metadata or args.flow_log is not None or args.summary):
        from netwrap.policy.model import build_policy

        # Parsed once, here; the run adds what only the backend knows (Policy.with_network).
        fields["policy"] = build_policy(allow=args.allow, deny=args.deny, default_policy=args.default_policy,
                                        offline=args.offline, block_private=args.block_private,
                                        block_metadata=args.block_metadata)
    return fields


def _outbound_interface(name: str):
    """The host interface --iface names, with its addresses (exit 2 if unknown or without IPv4).

    IPv4 is needed on every backend: the sandbox always has it, and
    slirp4netns binds its host sockets to IFACE's IPv4 address. IPv6 is
    optional: without it the run's IPv6 has no way out (never another one).
    """
    from netwrap.linux import interfaces

    if not name or "/" in name or len(name.encode()) >= 16:  # IFNAMSIZ, and no path tricks
        raise UsageError(f"--iface {name!r}: not an interface name")
    try:
        found = interfaces.lookup(name)
    except OSError as exc:
        raise UsageError(f"--iface {name}: cannot read its addresses: {exc.strerror or exc}") from None
    if found is None:
        raise UsageError(f"--iface {name}: no such interface (see 'ip link')")
    if not found.ipv4:
        raise UsageError(f"--iface {name}: it has no IPv4 address" + (
            f" (only {', '.join(found.ipv6)})" if found.ipv6 else ""))
    return found


def _open_outputs(capture: CaptureSpec | None, flow_log: str | None,
                  identity: Identity | None) -> tuple[OutputFile, ...]:
    """Every output file of the run, opened safely for `identity`; none left behind if one is refused."""
    from netwrap.linux import userfiles

    wanted = [("--flow-log", flow_log)] if flow_log is not None else []
    if capture is not None:
        wanted += [("--capture", path) for path in capture.files().values()]
    opened: list[OutputFile] = []
    try:
        for flag, path in wanted:
            opened.append(userfiles.open_output(path, flag=flag, identity=identity))
    except BaseException:
        userfiles.discard(opened, identity=identity)
        raise
    return tuple(opened)


def _read_hosts_file(path: str, identity: Identity | None) -> str:
    """The file's text, read with the command's rights (a user's link cannot show root's files)."""
    from netwrap.linux import userfiles

    data = userfiles.read_input(path, flag="--hosts-file", identity=identity)
    try:
        return data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise UsageError(f"--hosts-file {path!r}: not a text file") from None


def _run_as(name: str):
    import pwd

    from netwrap.config import RunAs

    try:
        entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        raise UsageError(f"--user {name!r}: no such user") from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid, groups=groups, name=entry.pw_name)
