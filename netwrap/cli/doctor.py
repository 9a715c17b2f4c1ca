"""`netwrap doctor` and `netwrap backends`: what this machine can do, and fixes."""

from __future__ import annotations

import os
import socket
from typing import Sequence, TextIO

import attrs

from netwrap import backends
from netwrap.linux import syscalls
from netwrap.config import Tools
from netwrap.linux.commands import CommandError, run, searched


@attrs.frozen(kw_only=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None


def check_user_namespaces() -> Check:
    name = "user namespaces"
    if os.geteuid() == 0:
        return Check(name=name, ok=True, detail="running as root: not needed")
    pid = os.fork()
    if pid == 0:
        try:
            syscalls.unshare(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNET)
            os._exit(0)
        except OSError as exc:
            os._exit(exc.errno or 1)
    _, status = os.waitpid(pid, 0)
    err = os.waitstatus_to_exitcode(status)
    if err == 0:
        return Check(name=name, ok=True, detail="an unprivileged user namespace with its own network works")
    fix = "allow unprivileged user namespaces: sysctl -w user.max_user_namespaces=15000"
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        fix = "sysctl -w kernel.unprivileged_userns_clone=1"
    elif _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        fix = "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile allowing userns)"
    return Check(name=name, ok=False, detail=f"unshare(CLONE_NEWUSER) failed: {os.strerror(err)}", fix=fix)


def check_tun() -> Check:
    name = "/dev/net/tun"
    if not os.path.exists("/dev/net/tun"):
        return Check(name=name, ok=False, detail="missing",
                     fix="load the tun module (modprobe tun) or create it: mknod /dev/net/tun c 10 200")
    if os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return Check(name=name, ok=True, detail="readable and writable")
    mode = oct(os.stat("/dev/net/tun").st_mode & 0o777)
    return Check(name=name, ok=False, detail=f"not accessible to this user (mode {mode})",
                 fix="chmod 0666 /dev/net/tun (most distributions ship it so; a udev rule keeps it)")


def check_backend(name: str) -> Check:
    try:
        backend = backends.get(name)
        probe = backend.probe()
    except Exception as exc:  # a third-party backend must not break the doctor
        return Check(name=f"backend {name}", ok=False, detail=f"cannot load: {exc}")
    if probe.available:
        where = f" at {probe.path}" if probe.path else ""
        return Check(name=f"backend {name}", ok=True, detail=f"{probe.version or 'version unknown'}{where}")
    return Check(name=f"backend {name}", ok=False, detail=probe.reason or "unavailable", fix=probe.fix)


def check_nftables() -> Check:
    name = "nftables"
    path = Tools.find().nft
    if path is None:
        return Check(name=name, ok=False, detail=f"nft not found in {searched()}",
                     fix="install the 'nftables' package (e.g. apt-get install nftables)")
    try:
        version = run([path, "--version"], timeout=10).stdout.strip()
    except CommandError as exc:
        return Check(name=name, ok=False, detail=str(exc), fix="reinstall the 'nftables' package")
    return Check(name=name, ok=True, detail=f"{version} at {path}")


@attrs.frozen(kw_only=True)
class Uplink:
    """One default route of the host's main table, as the doctor reports it."""

    family: int
    gateway: str | None
    interface: str | None
    addresses: tuple[str, ...]  # global ones on that interface, "address/prefix"


_MAIN_TABLE = 254
_RTN_UNICAST = 1
_SCOPE_UNIVERSE = 0


def host_uplinks() -> list[Uplink]:
    """The host's default routes (main table) and their interfaces' global addresses.

    Through pyroute2: `ip` may be missing where netwrap runs, and the doctor
    is a cold path, so its import (~115 ms) costs nothing anyone waits for.
    """
    from pyroute2 import IPRoute

    uplinks = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family):
                table = route.get_attr("RTA_TABLE") or route["table"]
                if route["dst_len"] != 0 or table != _MAIN_TABLE or route["type"] != _RTN_UNICAST:
                    continue
                oif = route.get_attr("RTA_OIF")
                addresses = () if oif is None else tuple(
                    f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                    for a in ipr.get_addr(family=family, index=oif) if a["scope"] == _SCOPE_UNIVERSE)
                uplinks.append(Uplink(family=family, gateway=route.get_attr("RTA_GATEWAY"),
                                      interface=names.get(oif), addresses=addresses))
    return uplinks


def uplink_check(uplinks: Sequence[Uplink]) -> Check:
    """Which way the sandbox's traffic leaves the host: pasta and slirp4netns
    connect out through the host's default route, and fail or stall without one."""
    name = "host uplink"
    parts = []
    for family, label in ((socket.AF_INET, "IPv4"), (socket.AF_INET6, "IPv6")):
        found = [u for u in uplinks if u.family == family]
        if not found:
            parts.append(f"no {label} default route")
        for u in found:
            via = f" via {u.gateway}" if u.gateway else ""
            dev = f" dev {u.interface}" if u.interface else ""
            addrs = f" ({', '.join(u.addresses)})" if u.addresses else " (no global address)"
            parts.append(f"{label} default{via}{dev}{addrs}")
    if uplinks:
        return Check(name=name, ok=True, detail="; ".join(parts))
    return Check(name=name, ok=False, detail="no default route: the sandbox would have no way out",
                 fix="connect the host to a network (see `ip route`); pasta and slirp4netns leave through its "
                     "default route")


def check_host_uplink() -> Check:
    try:
        uplinks = host_uplinks()
    except Exception as exc:  # pyroute2's NetlinkError is no OSError; the doctor reports, never crashes
        return Check(name="host uplink", ok=False, detail=f"cannot read the host's routes: {exc}")
    return uplink_check(uplinks)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def doctor(out: TextIO) -> int:
    checks = [check_user_namespaces(), check_tun(), check_host_uplink()]
    checks += [check_backend(name) for name in backends.names()]
    checks.append(check_nftables())
    for c in checks:
        out.write(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}\n")
        if not c.ok and c.fix:
            out.write(f"      fix: {c.fix}\n")
    failed = sum(not c.ok for c in checks)
    out.write(f"{len(checks) - failed} ok, {failed} failed\n" if failed else "all checks passed\n")
    return 1 if failed else 0


def list_backends(out: TextIO) -> int:
    for name in backends.names():
        try:
            backend = backends.get(name)
            probe = backend.probe()
            caps = ", ".join(sorted(backend.capabilities))
        except Exception as exc:
            out.write(f"{name}: unavailable: cannot load: {exc}\n")
            continue
        if probe.available:
            where = f", {probe.path}" if probe.path else ""
            out.write(f"{name}: available, version {probe.version or 'unknown'}{where}\n")
        else:
            out.write(f"{name}: unavailable: {probe.reason}" + (f" ({probe.fix})" if probe.fix else "") + "\n")
        out.write(f"  capabilities: {caps}\n")
    return 0


