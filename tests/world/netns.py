"""The world's two network namespaces and the veth between them.

    host  (nwh<pid>)  lo (+ 192.0.2.200/32 2001:db8:ff::200/128), nwveth0 192.0.2.2/24 2001:db8:ff::2/64,
                      default via the veth; nwveth2 198.18.0.2/24 2001:db8:fe::2/64, a second
                      uplink: defaults of a higher metric, and the source-address rules of a
                      multi-homed host (from its addresses: table 102, default via nwveth2)
    inet  (nwi<pid>)  lo, nwveth1 192.0.2.1/24 2001:db8:ff::1/64, nwveth3 198.18.0.1/24
                      2001:db8:fe::1/64, every address local

The second uplink is there for --iface: the far end sees which uplink a
connection came by in its peer address. The internet drops packets from the
second uplink's addresses that arrive by the first veth (ingress filtering,
BCP 38), so an address that went out by the wrong link cannot pass for the
right one.

The internet namespace answers every address: `local 0.0.0.0/0 dev lo` and
`local ::/0 dev lo` in table local (AnyIP).  Table local is consulted before
main, so the veth's subnets (and fe80::/64, for neighbour discovery) go into
table local as unicast routes too; otherwise replies to the host would be
"delivered" to the internet's own loopback.  DAD is off in both namespaces
(sysctls set before the veth exists, and nodad on the addresses) so addresses
are usable the moment `ip` returns: no waiting for tentative addresses.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from .addresses import (HOST2_V4, HOST2_V6, HOST_IF, HOST_IF2, HOST_LO_V4, HOST_LO_V6, HOST_V4, HOST_V6, INET2_V4,
                        INET2_V6, INET_IF, INET_IF2, INET_V4, INET_V6, LINK2_V4_NET, LINK2_V6_NET, LINK_V4_NET,
                        LINK_V6_NET, UPLINK2_METRIC_V4, UPLINK2_METRIC_V6, UPLINK2_TABLE)

NETNS_DIR = Path("/run/netns")
IP_TIMEOUT = 20
_STALE = re.compile(r"^nw[hi](\d+)$")


class NetnsError(RuntimeError):
    pass


def path_of(name: str) -> str:
    return str(NETNS_DIR / name)


def ip(*args: str, netns: str | None = None, stdin: str | None = None) -> str:
    argv = ["ip"] + (["-n", netns] if netns else []) + list(args)
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=IP_TIMEOUT)
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def _sysctl(netns: str, *settings: str) -> None:
    # nsenter joins only the network namespace: cheaper than `ip netns exec`.
    argv = ["nsenter", f"--net={path_of(netns)}", "sysctl", "-q", "-w", *settings]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT)
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def _nft(netns: str, ruleset: str) -> None:
    argv = ["nsenter", f"--net={path_of(netns)}", "nft", "-f", "-"]
    result = subprocess.run(argv, input=ruleset, capture_output=True, text=True, timeout=IP_TIMEOUT)
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def add(name: str) -> None:
    ip("netns", "add", name)


def delete(name: str) -> None:
    """Kill what still runs in the namespace, then remove it (quietly if gone)."""
    if not os.path.exists(path_of(name)):
        return
    kill_processes_in(name)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=IP_TIMEOUT)


def configure(host: str, inet: str) -> None:
    """Wire up the two (already added) namespaces; see the module docstring."""
    for name in (host, inet):
        _sysctl(name, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
    # Like a systemd host (50-default.conf): every user may open ICMP echo
    # sockets, which is how a rootless backend relays the sandbox's ping.
    _sysctl(host, "net.ipv4.ping_group_range=0 2147483647")
    # The peer is created straight in the internet namespace: moving an
    # interface would rebuild its IPv6 settings from different defaults.
    ip("-batch", "-", netns=host, stdin=(
        "link set lo up\n"
        f"link add {HOST_IF} type veth peer name {INET_IF} netns {inet}\n"
        f"link add {HOST_IF2} type veth peer name {INET_IF2} netns {inet}\n"
    ))
    ip("-batch", "-", netns=inet, stdin=(
        "link set lo up\n"
        f"addr add {INET_V4}/24 dev {INET_IF}\n"
        f"addr add {INET_V6}/64 dev {INET_IF} nodad\n"
        f"link set {INET_IF} up\n"
        "route add local 0.0.0.0/0 dev lo table local\n"
        "route add local ::/0 dev lo table local\n"
        f"route add {LINK_V4_NET} dev {INET_IF} table local src {INET_V4}\n"
        f"route add {LINK_V6_NET} dev {INET_IF} table local\n"
        f"route add fe80::/64 dev {INET_IF} table local\n"
        f"addr add {INET2_V4}/24 dev {INET_IF2}\n"
        f"addr add {INET2_V6}/64 dev {INET_IF2} nodad\n"
        f"link set {INET_IF2} up\n"
        f"route add {LINK2_V4_NET} dev {INET_IF2} table local src {INET2_V4}\n"
        f"route add {LINK2_V6_NET} dev {INET_IF2} table local\n"
        f"route add fe80::/64 dev {INET_IF2} table local metric 2\n"
    ))
    _nft(inet, (
        "table inet nwworld {\n"
        "  chain ingress_filter {\n"
        "    type filter hook prerouting priority raw; policy accept;\n"
        f"    iifname \"{INET_IF}\" ip saddr {LINK2_V4_NET} drop\n"
        f"    iifname \"{INET_IF}\" ip6 saddr {LINK2_V6_NET} drop\n"
        "  }\n"
        "}\n"
    ))
    ip("-batch", "-", netns=host, stdin=(
        f"addr add {HOST_V4}/24 dev {HOST_IF}\n"
        f"addr add {HOST_V6}/64 dev {HOST_IF} nodad\n"
        f"addr add {HOST_LO_V4}/32 dev lo\n"
        f"addr add {HOST_LO_V6}/128 dev lo nodad\n"
        f"link set {HOST_IF} up\n"
        f"route add default via {INET_V4}\n"
        f"route add default via {INET_V6}\n"
        f"addr add {HOST2_V4}/24 dev {HOST_IF2}\n"
        f"addr add {HOST2_V6}/64 dev {HOST_IF2} nodad\n"
        f"link set {HOST_IF2} up\n"
        f"route add default via {INET2_V4} metric {UPLINK2_METRIC_V4}\n"
        f"route add default via {INET2_V6} metric {UPLINK2_METRIC_V6}\n"
        f"route add default via {INET2_V4} table {UPLINK2_TABLE}\n"
        f"route add default via {INET2_V6} table {UPLINK2_TABLE}\n"
        f"rule add from {HOST2_V4} table {UPLINK2_TABLE} priority {UPLINK2_TABLE}\n"
    ))
    # A batch line cannot say -6, and `ip rule` does not infer IPv6 from the address.
    ip("-6", "rule", "add", "from", HOST2_V6, "table", str(UPLINK2_TABLE), "priority", str(UPLINK2_TABLE),
       netns=host)


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is `name`."""
    try:
        target = os.stat(path_of(name))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue  # gone meanwhile, or a kernel thread
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


def kill_processes_in(name: str) -> list[int]:
    pids = [pid for pid in pids_in(name) if pid != os.getpid()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete world namespaces left by runs whose pytest died (e.g. SIGKILL)."""
    removed = []
    if not NETNS_DIR.is_dir():
        return removed
    for entry in sorted(os.listdir(NETNS_DIR)):
        match = _STALE.match(entry)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            delete(entry)
            removed.append(entry)
    return removed
