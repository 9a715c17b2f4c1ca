"""Packet capture for one run (`-c FILE`, `-C POINT`): sockets, reader thread, views, files.

The parent owns everything here. Order of a run:

  open(spec)      before anything starts: open the file(s) (a bad path is exit 2)
  attach(...)     the backend is ready, the command does not exist yet: init
                  creates a packet socket in the sandbox (it is root there) and
                  sends it back; the parent sets up its ring and binds it to the
                  backend's interface; also one on the sandbox's lo (kept empty
                  by its filter unless a redirection carries the command's
                  flows through lo) and, for wire-egress, one on the host
  begin()         just before the command is started: packets stamped earlier
                  are the backend's own setup chatter and stay out
  stop()          the command has ended: read on until the rings have been
                  quiet a moment (the peer's last FIN/ACK may still be on its
                  way), then drain the writers with a deadline, close the
                  files with statistics; returns what --summary reports

Why packet sockets on the backend's interface rather than a mirror TAP fed by
tc mirred: see packet_ring. They see exactly what a mirror would (both
directions of that interface, which only the sandbox uses), with kernel
timestamps and kernel drop counts, and need no extra device in the sandbox
that the command could see or use.

One reader thread serves every ring, so the views see packets in one order
and the egress views can be derived from the child view as it goes.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from typing import Mapping, TextIO

import attrs

from netwrap.capture import bpf
from netwrap.capture import fields as packet_fields
from netwrap.capture.spec import CaptureSpec
from netwrap.capture.writer import CaptureSummary, CaptureWriter
from netwrap.capture.merge import TimeMerge
from netwrap.capture.egress import Addressing, EgressSynthesiser, host_resolver_forwarders
from netwrap.errors import NetwrapError
from netwrap.linux.hostfiles import ipv6_by_interface, local_ipv4, read_host_file
from netwrap.capture.ring import (
    ETH_P_ALL, LINKTYPE_ETHERNET, LINKTYPE_RAW, PACKET_OUTGOING, PacketRing, linktype_of,
)
from netwrap.capture.pcapng_file import describe_interface
from netwrap.capture.wire_egress import HostPacket, WireMatcher

TP_STATUS_CSUMNOTREADY = 1 << 3
POLL_MS = 100
# The ring hands a partly filled block over after RETIRE_MS; stopping waits
# until nothing new came for QUIET_S (a few of those), at most LINGER_S.
RETIRE_MS = 8
# How long a packet may sit in an unretired block: the retire timeout, plus
# the kernel timer's granularity (a few jiffies) and the reader's own delay.
HOLD_NS = (2 * RETIRE_MS + 4) * 1_000_000
# A backend that holds a packet and writes it back in (tunrelay's SYN gate)
# shows it twice on the interface: leaving, then arriving byte for byte the
# same. Small outgoing frames are remembered to write such a packet once.
SMALL_FRAME = 160
RECENT_SENT = 256
QUIET_S = 0.025
LINGER_S = 1.0
# Ring sizes in 1 MiB blocks. The kernel zeroes a ring when it is set up and
# frees it at close, about 1.5 ms per MiB here, paid on every run with -c. 16 MiB
# holds 130 ms of 1 Gbit/s for the reader to catch up; lo is kept small
# because it only carries redirected flows (tunrelay's fast path, proxy
# forcing): those deserve a larger ring once they exist.
CHILD_BLOCKS = 16
LO_BLOCKS = 4
HOST_BLOCKS = 16
WRITER_DEADLINE_S = 2.0

DETAILS = {
    "child": "what the command sent and received, on the sandbox's {ifname}",
    "egress": ("host-side flows the backend opened, synthesised from the child view: "
               "host addresses; ports, sequence numbers and segments are the child's"),
    "wire-egress": "the host's {ifname}, only the backend's flows for the command",
}


@attrs.frozen
class ViewSummary:
    view: str
    summary: CaptureSummary

    def line(self) -> str:
        s = self.summary
        dropped = s.dropped_queue + s.dropped_tap + s.dropped_write
        text = f"{self.view} {s.path}: {s.captured} packets captured, {dropped} dropped"
        return f"{text}; error: {s.error}" if s.error else text


class _View:
    """One output file and its interface blocks."""

    def __init__(self, name: str, writer: CaptureWriter, backend: str) -> None:
        self.name = name
        self.writer = writer
        self.backend = backend
        self.ifaces: dict[object, int] = {}
        self.counts: dict[int, int] = {}

    def iface(self, key: object, ifname: str, linktype: int) -> int:
        iface = self.ifaces.get(key)
        if iface is None:
            detail = DETAILS[self.name].format(ifname=ifname)
            iface = self.writer.add_interface(ifname, linktype,
                                              describe_interface(view=self.name, backend=self.backend, detail=detail))
            self.ifaces[key] = iface
            self.counts[iface] = 0
        return iface

    def submit(self, iface: int, ts_ns: int, data: bytes) -> None:
        self.counts[iface] += 1
        self.writer.submit(iface, ts_ns, data)


class CaptureSession:
    def __init__(self, spec: CaptureSpec, backend: str, views: dict[str, _View]) -> None:
        self.spec = spec
        self.backend = backend
        self.views = views
        self._child_ring: PacketRing | None = None
        self._lo_ring: PacketRing | None = None
        self._host_ring: PacketRing | None = None
        self._child_linktype = LINKTYPE_RAW
        self._cutoff_ns = 1 << 62  # nothing until begin()
        self._before_start = 0
        self._lo_before_start = 0
        self._synth: EgressSynthesiser | None = None
        self._matcher: WireMatcher | None = None
        self._local: set[bytes] = set()
        # The sandbox's two rings (its uplink, then lo) feed one time-ordered merge.
        self._merge: TimeMerge[tuple] = TimeMerge(2, hold_ns=HOLD_NS)
        self._sent_small: dict[bytes, None] = {}
        self.reinjected = 0
        self._wake_r, self._wake_w = -1, -1
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._summaries: list[ViewSummary] | None = None

    # -------------------------------------------------------------- set-up

    @classmethod
    def open(cls, spec: CaptureSpec, *, backend: str, fds: Mapping[str, int] | None = None) -> CaptureSession:
        """Open every file of the capture point; UsageError (exit 2) if one cannot be.

        `fds`: path -> fd of files already opened (netwrap.linux.userfiles); taken over.
        """
        views: dict[str, _View] = {}
        try:
            for view, path in spec.files().items():
                views[view] = _View(view, CaptureWriter.open(path, fd=(fds or {}).get(path)), backend)
        except BaseException:
            for opened in views.values():
                opened.writer.stop(time.monotonic())
            raise
        return cls(spec, backend, views)

    def attach(self, calls, network, netns_pid: int) -> None:
        """Create and bind the packet sockets and start reading (see the module docstring)."""
        ifname = network.interface or sandbox_uplink(netns_pid)
        if ifname is None:
            raise NetwrapError("capture: cannot find the backend's interface in the sandbox")
        try:
            self._child_ring = PacketRing(calls.socket(socket.AF_PACKET, socket.SOCK_RAW, 0), block_count=CHILD_BLOCKS,
                                          retire_ms=RETIRE_MS)
            self._child_ring.bind(ifname)
            hatype = self._child_ring.sock.getsockname()[3]
            if network.internal_networks:
                bpf.attach(self._child_ring.sock, bpf.except_networks(
                    list(network.internal_networks), ethernet=linktype_of(hatype) == LINKTYPE_ETHERNET))
            self._lo_ring = PacketRing(calls.socket(socket.AF_PACKET, socket.SOCK_RAW, 0), block_count=LO_BLOCKS,
                                       retire_ms=RETIRE_MS, bpf=bpf.loopback_redirected())
            self._lo_ring.bind("lo")
        except OSError as exc:
            raise NetwrapError(f"capture: cannot capture on the sandbox's {ifname}: {exc.strerror or exc}") from None
        self._child_linktype = linktype_of(hatype)
        self._local = sandbox_addresses(netns_pid)
        if "child" in self.views:
            self.views["child"].iface("main", ifname, self._child_linktype)
        if "egress" in self.views or "wire-egress" in self.views:
            self._synth = EgressSynthesiser(Addressing(host_resolver_forwarders(tuple(network.dns))))
        if "egress" in self.views:
            self.views["egress"].iface("egress", "egress", LINKTYPE_RAW)
        if "wire-egress" in self.views:
            self._matcher = WireMatcher()
            try:
                # Every interface: made with ETH_P_ALL and left unbound. What
                # arrives before the ring exists waits in the socket's queue,
                # which is never read: it is before the command started anyway.
                host = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                self._host_ring = PacketRing(host, block_count=HOST_BLOCKS, retire_ms=RETIRE_MS,
                                             bpf=bpf.ip_except_loopback_echo(socket.if_nametoindex("lo")))
            except OSError as exc:
                raise NetwrapError(f"capture: cannot capture on the host's interfaces: {exc.strerror or exc}") from None
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        for view in self.views.values():
            view.writer.start()
        self._thread = threading.Thread(target=self._run, name="netwrap-capture-reader", daemon=True)
        self._thread.start()

    def begin(self) -> None:
        """The command is about to start: from now on packets are its."""
        self._cutoff_ns = time.time_ns()

    # ----------------------------------------------------------- stopping

    def stop(self, deadline: float | None = None) -> list[ViewSummary]:
        """End the capture by `deadline` (time.monotonic(); idempotent); the summary of each view.

        The reader lingers until the rings are quiet (at most LINGER_S), then
        the writers flush; what is still queued at the deadline is dropped and
        counted. A reader still running then is abandoned with its rings open.
        """
        if self._summaries is not None:
            return self._summaries
        if deadline is None:
            deadline = time.monotonic() + LINGER_S + 2.0 + WRITER_DEADLINE_S
        if self._thread is not None:
            self._stopping.set()
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
            # The writers get the last WRITER_DEADLINE_S before the deadline.
            self._thread.join(max(0.0, deadline - WRITER_DEADLINE_S - time.monotonic()))
        rings = [r for r in (self._child_ring, self._lo_ring, self._host_ring) if r is not None]
        stats = {id(r): r.statistics() for r in rings}
        tap_stats = self._tap_stats(stats)
        summaries = []
        for name, view in self.views.items():
            summaries.append(ViewSummary(name, view.writer.stop(deadline, tap_stats.get(name, {}))))
        if self._thread is None or not self._thread.is_alive():
            fds = [fd for fd in (self._wake_r, self._wake_w) if fd >= 0]
            self._wake_r = self._wake_w = -1
            # Closing a packet socket waits for an RCU grace period (~20 ms
            # here, each); nothing reads the rings any more, so they close in
            # the background while netwrap stops the backend.
            threading.Thread(target=_close_all, args=(rings, fds), name="netwrap-capture-close",
                             daemon=True).start()
        self._summaries = summaries
        return summaries

    close = stop

    def _tap_stats(self, stats: dict[int, tuple[int, int]]) -> dict[str, dict[int, tuple[int, int]]]:
        """(received, dropped) per interface block, from the rings' kernel counters."""
        out: dict[str, dict[int, tuple[int, int]]] = {}
        child_drops = 0
        for ring, key, before in ((self._child_ring, "main", self._before_start),
                                  (self._lo_ring, "lo", self._lo_before_start)):
            if ring is None:
                continue
            received, dropped = stats[id(ring)]
            child_drops += dropped
            if "child" in self.views and key in self.views["child"].ifaces:
                out.setdefault("child", {})[self.views["child"].ifaces[key]] = (max(0, received - before), dropped)
        if "egress" in self.views:
            iface = self.views["egress"].ifaces["egress"]
            out["egress"] = {iface: (self.views["egress"].counts[iface] + child_drops, child_drops)}
        if "wire-egress" in self.views and self._host_ring is not None:
            view = self.views["wire-egress"]
            # The host ring's drops may be anyone's packets; they are put on
            # the first interface block rather than guessed apart.
            dropped = stats[id(self._host_ring)][1]
            per = {iface: (n, 0) for iface, n in view.counts.items()}
            if per:
                first = min(per)
                per[first] = (per[first][0] + dropped, dropped)
            out["wire-egress"] = per
        return out

    # ------------------------------------------------------------- reading

    def _run(self) -> None:
        try:
            self._read_loop()
        except Exception as exc:  # a bug must not take the run down; the files still close
            sys.stderr.write(f"netwrap: warning: capture reader failed: {exc!r}\n")

    def _read_loop(self) -> None:
        poller = select.poll()
        rings = [r for r in (self._child_ring, self._lo_ring, self._host_ring) if r is not None]
        for ring in rings:
            poller.register(ring.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        quiet_since = None
        give_up = None
        while True:
            poller.poll(POLL_MS)
            got = self._read_all()
            if not self._stopping.is_set():
                continue
            now = time.monotonic()
            if give_up is None:
                give_up = now + LINGER_S
            if got or quiet_since is None:
                quiet_since = now
            if now - quiet_since >= QUIET_S or now >= give_up:
                break
            time.sleep(RETIRE_MS / 1000)  # let the kernel retire the last block
        self._read_all()
        self._drain_merge()
        if self._matcher is not None:
            self._matcher.flush()

    def _read_all(self) -> int:
        """Read every ring; how many of the sandbox's packets came.

        Only those count for "quiet": the host ring sees all of the host's
        traffic and may never be quiet.
        """
        now_ns = time.time_ns()  # before reading: every block retired by now is read below
        n = 0
        add = self._merge.add
        if self._child_ring is not None:
            n += self._child_ring.read(lambda ts, *packet: add(0, ts, (self._on_child, ts, *packet)))
        if self._lo_ring is not None:
            n += self._lo_ring.read(lambda ts, *packet: add(1, ts, (self._on_lo, ts, *packet)))
        for handler, *packet in self._merge.release(now_ns):
            handler(*packet)
        if self._host_ring is not None:
            self._host_ring.read(self._on_host)
        return n

    def _drain_merge(self) -> None:
        for handler, *packet in self._merge.drain():
            handler(*packet)

    def _on_child(self, ts: int, ifindex: int, hatype: int, pkttype: int, status: int, frame: bytes, orig: int) -> None:
        if ts < self._cutoff_ns:
            self._before_start += 1
            return
        if len(frame) <= SMALL_FRAME:
            if pkttype == PACKET_OUTGOING:
                self._sent_small[frame] = None
                if len(self._sent_small) > RECENT_SENT:
                    del self._sent_small[next(iter(self._sent_small))]
            elif frame in self._sent_small:
                # The sandbox's own packet, handed back in by the backend: it
                # was written when it left, and a second copy would read as a
                # retransmission. Real traffic never arrives byte-identical to
                # what left (its addresses would be swapped).
                del self._sent_small[frame]
                self.reinjected += 1
                return
        child = self.views.get("child")
        if child is not None:
            child.submit(child.ifaces["main"], ts, frame)
        if self._synth is not None:
            outgoing = pkttype == PACKET_OUTGOING
            off = packet_fields.ip_offset(self._child_linktype, frame)
            f = packet_fields.parse(frame, off) if off is not None else None
            if f is None:
                return
            if outgoing:
                if len(self._local) < 64:
                    self._local.add(f.src)  # gained later (SLAAC): lo's directions need it
            elif f.src in self._local:
                # The sandbox's own packet handed back in by the backend (tunrelay
                # re-injects a held SYN): it stays in the child view, which mirrors
                # the interface, but it is no host-side traffic.
                return
            self._derive(ts, frame, f, outgoing, status)

    def _on_lo(self, ts: int, ifindex: int, hatype: int, pkttype: int, status: int, frame: bytes, orig: int) -> None:
        if ts < self._cutoff_ns:
            self._lo_before_start += 1
            return
        linktype = linktype_of(hatype)
        child = self.views.get("child")
        if child is not None:
            child.submit(child.iface("lo", "lo", linktype), ts, frame)
        if self._synth is not None:
            off = packet_fields.ip_offset(linktype, frame)
            f = packet_fields.parse(frame, off) if off is not None else None
            if f is not None and (f.src in self._local) != (f.dst in self._local):
                # lo has no direction of its own: the command's side is the sandbox's address.
                self._derive(ts, frame, f, f.src in self._local, status)

    def _derive(self, ts: int, frame: bytes, f: packet_fields.Fields, outgoing: bool, status: int) -> None:
        """Feed the egress views from one child packet."""
        made = self._synth.synthesise(frame, f, outgoing, bool(status & TP_STATUS_CSUMNOTREADY))
        if made is None:
            return
        packet, f = made
        egress = self.views.get("egress")
        if egress is not None:
            egress.submit(egress.ifaces["egress"], ts, packet)
        if self._matcher is not None and outgoing and packet_fields.is_flow_opener(f):
            for hp in self._matcher.expect(ts, f):
                self._write_host(hp)

    def _on_host(self, ts: int, ifindex: int, hatype: int, pkttype: int, status: int, frame: bytes, orig: int) -> None:
        if ts < self._cutoff_ns:
            return
        off = packet_fields.ip_offset(linktype_of(hatype), frame)
        f = packet_fields.parse(frame, off) if off is not None else None
        if f is None:
            return
        for hp in self._matcher.offer(HostPacket(ts, ifindex, hatype, frame, orig), f):
            self._write_host(hp)

    def _write_host(self, hp: HostPacket) -> None:
        view = self.views["wire-egress"]
        iface = view.ifaces.get(hp.ifindex)
        if iface is None:
            try:
                name = socket.if_indextoname(hp.ifindex)
            except OSError:
                name = f"if{hp.ifindex}"
            iface = view.iface(hp.ifindex, name, linktype_of(hp.hatype))
        view.submit(iface, hp.ts_ns, hp.frame)


def _close_all(rings: list[PacketRing], fds: list[int]) -> None:
    for ring in rings:
        ring.close()
    for fd in fds:
        os.close(fd)


def sandbox_uplink(netns_pid: int) -> str | None:
    """The device of the sandbox's default route (IPv4, else IPv6), else its only non-lo device."""
    base = f"/proc/{netns_pid}/net"
    for line in read_host_file(f"{base}/route").splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
            return cols[0]
    for line in read_host_file(f"{base}/ipv6_route").splitlines():
        cols = line.split()
        if len(cols) >= 10 and cols[0] == "0" * 32 and cols[1] == "00" and cols[9] != "lo":
            return cols[9]
    names = [line.split(":")[0].strip() for line in read_host_file(f"{base}/dev").splitlines()[2:]]
    others = [n for n in names if n != "lo"]
    return others[0] if len(others) == 1 else None


def sandbox_addresses(netns_pid: int) -> set[bytes]:
    """The sandbox's own addresses but loopback, IPv4 from the local routing table, IPv6 from if_inet6."""
    base = f"/proc/{netns_pid}/net"
    found = {socket.inet_aton(a) for a in local_ipv4(read_host_file(f"{base}/fib_trie")) if not a.startswith("127.")}
    found.update(a for a, dev in ipv6_by_interface(read_host_file(f"{base}/if_inet6")) if dev != "lo")
    return found


def report_errors(summaries: list[ViewSummary], stream: TextIO) -> None:
    """A capture that failed (a full disk) is said even without --summary; the run goes on."""
    for s in summaries:
        if s.summary.error:
            lost = s.summary.dropped_write
            stream.write(f"netwrap: warning: {s.summary.error}"
                         + (f" ({lost} packets not stored)" if lost else "") + "\n")
    stream.flush()
