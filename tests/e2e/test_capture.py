"""-c/--capture and -C/--capture-point, end to end, for every backend.

Each file is read back with tshark (as the world's user, so its stderr is
only tshark's warnings, which must be none) and checked for what the far end
of the test world really exchanged with the command.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

import netwrap
from netwrap.backends import BUILTIN
from world.harness import World

PORT = World.HTTP_ALT_PORT
URL_V4 = f"http://{World.WORLD_V4}:{PORT}/hello"
URL_V6 = f"http://[{World.WORLD_V6}]:{PORT}/hello"
CURL = ["curl", "-sS", "--max-time", "10"]


def netwrap_run(world: World, backend, *args: str, user: bool = True, **kw) -> subprocess.CompletedProcess:
    return world.netwrap(*backend.argv, *args, user=user, **kw)


def tshark(world: World, path: Path, *args: str) -> subprocess.CompletedProcess:
    done = world.run(["tshark", "-r", str(path), *args])
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # no warning: the file is whole and valid
    return done


def fields(world: World, path: Path, display_filter: str, *names: str) -> list[list[str]]:
    out = tshark(world, path, "-Y", display_filter, "-T", "fields", "-E", "separator=|",
                 *[a for n in names for a in ("-e", n)]).stdout
    return [line.split("|") for line in out.splitlines()]


def assert_full_http_conversation(world: World, path: Path, server: str, client: str | None = None) -> None:
    """SYN to FIN in both directions with `server`:PORT, and the request line."""
    ip = "ipv6" if ":" in server else "ip"
    rows = fields(world, path, f"tcp.port == {PORT} && {ip}.addr == {server}",
                  f"{ip}.src", f"{ip}.dst", "tcp.flags.syn", "tcp.flags.ack", "tcp.flags.fin")
    sent = [r for r in rows if r[1] == server]
    received = [r for r in rows if r[0] == server]
    assert any(r[2:4] == ["1", "0"] for r in sent), rows  # SYN
    assert any(r[2:4] == ["1", "1"] for r in received), rows  # SYN+ACK
    assert any(r[4] == "1" for r in sent) and any(r[4] == "1" for r in received), rows  # FIN both ways
    if client is not None:
        assert {r[0] for r in sent} == {client}, rows
    requests = fields(world, path, f"http.request && {ip}.dst == {server}",
                      "http.request.method", "http.request.uri", "http.request.version")
    assert ["GET", "/hello", "HTTP/1.1"] in requests, requests


# -- the child view ------------------------------------------------------------------------------

@pytest.mark.parametrize("url, server", [(URL_V4, World.WORLD_V4), (URL_V6, World.WORLD_V6)], ids=["ipv4", "ipv6"])
def test_child_view_holds_the_whole_tcp_conversation(world: World, backend, as_user: bool, url, server):
    path = world.user_dir("cap") / "run.pcapng"
    done = netwrap_run(world, backend, "-c", str(path), "--", *CURL, url, user=as_user)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from the world\n" and done.stderr == ""
    assert_full_http_conversation(world, path, server)


# What a capture that doubled, dropped or reordered packets would show (flow
# control, such as a full receive window, is real and stays out).
INVENTED = " || ".join(f"tcp.analysis.{flag}" for flag in (
    "retransmission", "fast_retransmission", "spurious_retransmission", "out_of_order",
    "lost_segment", "ack_lost_segment", "duplicate_ack"))


# The sandbox kernel's count of TCP segments it retransmitted (RFC 4293's
# tcpRetransSegs, /proc/net/snmp): the independent record of real loss.
RETRANS_SEGS = ("awk '/^Tcp:/ {if (++n == 1) {for (i = 1; i <= NF; i++) if ($i == \"RetransSegs\") c = i} "
                "else print \"retrans\", $c}' /proc/net/snmp")


@pytest.mark.parametrize("server", [World.WORLD_V4, World.WORLD_V6], ids=["ipv4", "ipv6"])
def test_transfer_shows_each_packet_once(world: World, backend, as_user: bool, server: str):
    # Every SYN written once, and no loss or disorder that did not happen,
    # whichever path the backend's TCP takes (tunrelay's fast path holds each
    # SYN on the TUN, then writes it back in; its packets then continue on the
    # sandbox's lo). Real loss is possible on a loaded machine: the sandbox's
    # kernel, which ends the command's TCP on every path, counts what it
    # retransmitted, and the capture may show no more than that.
    path = world.user_dir("cap") / "run.pcapng"
    host = f"[{server}]" if ":" in server else server
    script = "; ".join(f"{' '.join(CURL)} -o /dev/null http://{host}:{PORT}/bytes/{size}"
                       for size in (1 << 20, 3 << 20)) + f"; {RETRANS_SEGS}"
    done = netwrap_run(world, backend, "-c", str(path), "--", "sh", "-c", script, user=as_user)
    assert done.returncode == 0, done.stderr
    [retransmitted] = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("retrans ")]
    ip = "ipv6" if ":" in server else "ip"
    syns = fields(world, path, f"tcp.flags.syn == 1 && tcp.flags.ack == 0 && {ip}.dst == {server}", "tcp.srcport")
    assert len(syns) == 2 and len({p for [p] in syns}) == 2, syns  # two connections, one SYN each
    flagged = fields(world, path, INVENTED, "frame.number", "frame.interface_name", "_ws.expert.message")
    if retransmitted == 0:
        assert flagged == [], flagged
    else:
        resent = fields(world, path, "tcp.analysis.retransmission || tcp.analysis.fast_retransmission",
                        "frame.number")
        assert len(resent) <= retransmitted, (retransmitted, flagged)
    sent = fields(world, path, f"tcp.srcport == {PORT} && {ip}.src == {server}", "tcp.len")
    assert sum(int(n) for [n] in sent) >= (1 << 20) + (3 << 20)


def test_child_view_shows_dns_and_ping(world: World, backend, as_user: bool):
    path = world.user_dir("cap") / "run.pcapng"
    script = f"{' '.join(CURL)} -4 http://www.example.test:{PORT}/hello && ping -c 2 -W 5 {World.WORLD_V4}"
    done = netwrap_run(world, backend, "-c", str(path), "--", "sh", "-c", script, user=as_user)
    assert done.returncode == 0, done.stderr
    dns = fields(world, path, 'dns.qry.name == "www.example.test" && dns.qry.type == 1',
                 "dns.flags.response", "dns.a")
    assert ["0", ""] in dns and ["1", World.WORLD_V4] in dns, dns
    echo = fields(world, path, f"icmp && ip.addr == {World.WORLD_V4}", "icmp.type", "icmp.seq")
    assert sorted(echo) == [["0", "1"], ["0", "2"], ["8", "1"], ["8", "2"]], echo


def test_child_view_shows_dns_to_the_address_asked_under_a_forced_resolver(world: World, backend, as_user: bool):
    # The forced resolver answers, but the command asked 8.8.8.8 and its view
    # shows the exchange with 8.8.8.8 (TPROXY keeps the address, nothing NATs it).
    path = world.user_dir("cap") / "run.pcapng"
    mark = world.mark()
    script = f"dig +short +time=2 +tries=1 @8.8.8.8 www.example.test A && ping -c 1 -W 5 {World.WORLD_V4}"
    done = netwrap_run(world, backend, "-c", str(path), "-d", World.DNS_V4, "--", "sh", "-c", script, user=as_user)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == World.WORLD_V4, done.stdout
    dns = fields(world, path, 'dns.qry.name == "www.example.test" && dns.qry.type == 1',
                 "ip.src", "ip.dst", "dns.flags.response", "dns.a")
    assert any(r[1] == "8.8.8.8" and r[2] == "0" for r in dns), dns
    assert any(r[0] == "8.8.8.8" and r[2:] == ["1", World.WORLD_V4] for r in dns), dns
    assert {r["local"] for r in world.dns_log(since=mark) if r["qname"] == "www.example.test"} == {World.DNS_V4}


def test_other_host_traffic_is_not_captured(world: World, backend):
    path = world.user_dir("cap") / "run.pcapng"
    script = (f"{' '.join(CURL)} -o /dev/null http://{World.WORLD_V4}:{PORT}/inside-1 && echo ready && read go "
              f"&& {' '.join(CURL)} -o /dev/null http://{World.WORLD_V4}:{PORT}/inside-2")
    proc = world.popen(world.netwrap_cmd(*backend.argv, "-c", str(path), "--", "sh", "-c", script),
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        # The same server, the same port, from the same host, while the capture runs.
        outside = world.run([*CURL, "-o", "/dev/null", f"http://{World.WORLD_V4}:{PORT}/outside"])
        assert outside.returncode == 0, outside.stderr
        _out, err = proc.communicate("go\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    uris = [r[0] for r in fields(world, path, "http.request", "http.request.uri")]
    assert uris == ["/inside-1", "/inside-2"]


def test_capinfos_names_application_interfaces_view_and_backend(world: World, backend):
    base = world.user_dir("cap") / "run.pcapng"
    done = netwrap_run(world, backend, "-C", "both", "-c", str(base), "--", *CURL, "-o", "/dev/null", URL_V4)
    assert done.returncode == 0, done.stderr
    for view in ("child", "egress"):
        info = world.run(["capinfos", str(base.with_name(f"run.{view}.pcapng"))])
        assert info.returncode == 0 and info.stderr == "", info.stderr
        assert f"Capture application: netwrap {netwrap.__version__}" in info.stdout
        names = [line.split("=", 1)[1].strip() for line in info.stdout.splitlines() if line.strip().startswith("Name =")]
        descriptions = [line.split("=", 1)[1].strip() for line in info.stdout.splitlines()
                        if line.strip().startswith("Description =")]
        assert len(names) == len(descriptions) >= 1, info.stdout
        assert all(d.startswith(f"netwrap view={view} backend={backend}: ") for d in descriptions), descriptions
        if view == "egress":
            assert names == ["egress"]
        else:
            # The backend's interface in the sandbox (pasta copies the host's name, slirp4netns
            # says tap0), then lo if a redirection carried the command's flows there (tunrelay).
            assert names[0] not in ("", "lo", "egress") and names[1:] in ([], ["lo"]), names


@pytest.mark.skipif("tunrelay" not in BUILTIN, reason="tunrelay is not shipped")
@pytest.mark.parametrize("path", ["tproxy", "nat"])
def test_child_view_over_each_tunrelay_tcp_path(world: World, as_user: bool, path: str):
    # tproxy: TCP reaches the relay through the sandbox's lo; nat: the relay talks
    # to the sandbox's kernel from fake peers on the TUN. Either way the file holds
    # the command's conversation with the real server, and only that.
    folder = world.user_dir("cap")
    done = world.netwrap("--backend", "tunrelay", "--tunrelay-tcp", path, "-C", "both",
                         "-c", str(folder / "run.pcapng"), "--", *CURL, URL_V4, user=as_user)
    assert done.returncode == 0, done.stderr
    for view in ("child", "egress"):
        file = folder / f"run.{view}.pcapng"
        assert_full_http_conversation(world, file, World.WORLD_V4)
        peers = {tuple(r) for r in fields(world, file, "tcp", "ip.src", "ip.dst")}
        assert all(World.WORLD_V4 in pair for pair in peers), peers


# -- the egress views ----------------------------------------------------------------------------

def test_both_writes_the_two_sibling_files(world: World, backend, as_user: bool):
    folder = world.user_dir("cap")
    done = netwrap_run(world, backend, "-C", "both", "-c", str(folder / "run.pcapng"), "--", *CURL, URL_V4,
                       user=as_user)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["run.child.pcapng", "run.egress.pcapng"]
    assert_full_http_conversation(world, folder / "run.child.pcapng", World.WORLD_V4)
    # The host-side flow: from the host's own address to the world's address and port.
    assert_full_http_conversation(world, folder / "run.egress.pcapng", World.WORLD_V4, client=World.HOST_V4)


def test_wire_egress_without_cap_net_raw_is_refused_before_anything(world: World, backend):
    folder = world.user_dir("cap")
    done = netwrap_run(world, backend, "-C", "wire-egress", "-c", str(folder / "w.pcapng"),
                       "--", "touch", str(folder / "ran"))
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("netwrap: error: --capture-point wire-egress") and "CAP_NET_RAW" in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert list(folder.iterdir()) == []  # neither the command nor the file


def test_wire_egress_as_root_captures_the_real_flow(world: World, backend):
    path = world.user_dir("cap") / "w.pcapng"
    done = netwrap_run(world, backend, "-C", "wire-egress", "-c", str(path), "--", *CURL, URL_V4, user=False)
    assert done.returncode == 0, done.stderr
    assert_full_http_conversation(world, path, World.WORLD_V4, client=World.HOST_V4)
    info = world.run(["capinfos", str(path)]).stdout
    assert f"netwrap view=wire-egress backend={backend}" in info and "Name = nwveth0" in info


# -- bad paths, signals, a full disk -------------------------------------------------------------

@pytest.mark.parametrize("where", ["missing-dir", "unwritable-dir", "unwritable-file"])
def test_bad_capture_path_is_exit_2_before_the_command(world: World, backend, where: str):
    folder = world.user_dir("cap")
    if where == "missing-dir":
        target = "/nonexistent/dir/x.pcapng"
    elif where == "unwritable-dir":
        locked = folder / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        target = str(locked / "x.pcapng")
    else:
        target = str(folder / "theirs.pcapng")
        Path(target).write_bytes(b"")  # root's, 0644
    done = netwrap_run(world, backend, "-c", target, "--", "touch", str(folder / "ran"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("netwrap: error: --capture ") and len(done.stderr.splitlines()) == 1
    assert not (folder / "ran").exists()


def test_command_killed_by_sigkill_leaves_a_readable_file(world: World, backend, as_user: bool):
    path = world.user_dir("cap") / "run.pcapng"
    script = f"{' '.join(CURL)} -o /dev/null {URL_V4} && kill -KILL $$"
    done = netwrap_run(world, backend, "-c", str(path), "--", "sh", "-c", script, user=as_user)
    assert done.returncode == 128 + signal.SIGKILL, done.stderr
    assert_full_http_conversation(world, path, World.WORLD_V4)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_netwrap_stopped_by_a_signal_leaves_a_readable_file(world: World, backend, sig):
    path = world.user_dir("cap") / "run.pcapng"
    script = f"{' '.join(CURL)} -o /dev/null {URL_V4} && echo ready && exec sleep 100"
    proc = world.popen(world.netwrap_cmd(*backend.argv, "-c", str(path), "--", "sh", "-c", script),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        os.kill(proc.pid, sig)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    assert_full_http_conversation(world, path, World.WORLD_V4)
    # Closed properly: the statistics block is there.
    assert "Number of stat entries = 1" in world.run(["capinfos", str(path)]).stdout


@pytest.fixture
def small_disk(world: World):
    """A 64 KiB tmpfs the test user may write to."""
    mount = world.user_dir("disk")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0777", "netwrap-test", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_reported_and_the_exit_status_kept(world: World, backend, small_disk: Path):
    path = small_disk / "run.pcapng"
    script = f"{' '.join(CURL)} -o /dev/null http://{World.WORLD_V4}:{PORT}/bytes/2000000; exit 3"
    done = netwrap_run(world, backend, "--summary", "-c", str(path), "--", "sh", "-c", script)
    assert done.returncode == 3, done.stderr
    assert f"netwrap: warning: capture file {path}: No space left on device" in done.stderr, done.stderr
    assert "packets not stored" in done.stderr
    tshark(world, path)  # what is there is whole


# -- --summary --------------------------------------------------------------------------------------

def test_summary_counts_packets_per_view(world: World, backend):
    folder = world.user_dir("cap")
    done = netwrap_run(world, backend, "--summary", "-C", "both", "-c", str(folder / "run.pcapng"),
                       "--", *CURL, "-o", "/dev/null", URL_V4)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[2]: line for line in done.stderr.splitlines() if line.startswith("netwrap: capture:")}
    assert set(lines) == {"child", "egress"}, done.stderr
    for view, line in lines.items():
        stored = len(tshark(world, folder / f"run.{view}.pcapng").stdout.splitlines())
        assert f"run.{view}.pcapng: {stored} packets captured, 0 dropped" in line, line
