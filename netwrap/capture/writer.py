"""The capture writer: a thread draining a bounded packet queue into pcapng.

The tap reader calls `submit()` for each packet; `submit()` never blocks and
never raises for a full queue: when the writer cannot keep up, the packet is
dropped and counted for its interface. Write errors (a full disk) stop the
writing, are recorded for the summary and never reach the command's side:
the command keeps running and its exit status is kept.

    writer = CaptureWriter.open(path)                    # before the command
    iface = writer.add_interface("child", LINKTYPE_ETHERNET,
                                 describe_interface(view="child", backend="pasta"))
    writer.start()
    writer.submit(iface, ts_ns, frame)                   # tap reader, per packet
    summary = writer.stop(time.monotonic() + 2.0, tap_stats={iface: (rx, drop)})
"""

from __future__ import annotations

import threading
import time
from typing import Mapping

import attrs

from netwrap.capture.pcapng_file import CaptureFile

# After the drain deadline the writer still writes the statistics and fsyncs;
# stop() waits this much longer for that before giving up on the thread.
_CLOSE_GRACE = 2.0

# While stopping, the writer checks the deadline between slices of this many
# packets, so a large backlog on a slow disk cannot hold the exit for long.
_STOP_SLICE = 4096


@attrs.frozen(kw_only=True)
class QueueLimits:
    """Bounds on what waits for the disk, queued and being written together.

    64 MiB holds about half a second of 1 Gbit/s: enough to ride over a slow
    fsync or page-cache writeback, small enough not to matter for memory.
    """

    packets: int = 65536
    bytes: int = 64 << 20


@attrs.frozen(kw_only=True)
class InterfaceSummary:
    id: int
    name: str
    captured: int  # packets stored in the file
    bytes: int  # bytes of those packets
    dropped_queue: int  # writer could not keep up (or had stopped)
    dropped_tap: int  # reported by the tap reader (kernel/tap queue)
    dropped_write: int  # lost because the file could not be written


@attrs.frozen(kw_only=True)
class CaptureSummary:
    """What --summary reports about the capture."""

    path: str
    interfaces: tuple[InterfaceSummary, ...]
    error: str | None

    @property
    def captured(self) -> int:
        return sum(i.captured for i in self.interfaces)

    @property
    def bytes(self) -> int:
        return sum(i.bytes for i in self.interfaces)

    @property
    def dropped_queue(self) -> int:
        return sum(i.dropped_queue for i in self.interfaces)

    @property
    def dropped_tap(self) -> int:
        return sum(i.dropped_tap for i in self.interfaces)

    @property
    def dropped_write(self) -> int:
        return sum(i.dropped_write for i in self.interfaces)

    def line(self) -> str:
        """One line for --summary."""
        text = (
            f"capture {self.path}: {self.captured} packets, {self.bytes} bytes;"
            f" dropped {self.dropped_queue} (queue), {self.dropped_tap} (tap),"
            f" {self.dropped_write} (write)"
        )
        return f"{text}; error: {self.error}" if self.error else text


class CaptureWriter:
    """Owns a CaptureFile and the thread that writes it."""

    def __init__(self, file: CaptureFile, *, limits: QueueLimits = QueueLimits()) -> None:
        self._file = file
        self._max_packets = limits.packets
        self._max_bytes = limits.bytes
        # _lock guards the queue and its counters; _file_lock serialises the
        # file between the writer thread and add_interface().
        self._lock = threading.Lock()
        self._file_lock = threading.Lock()
        self._wakeup = threading.Event()
        self._pending: list[tuple[int, int, bytes]] = []
        self._pending_bytes = 0
        self._inflight_packets = 0  # taken by the writer, not yet written
        self._inflight_bytes = 0
        self._idle = False
        self._stopping = False
        self._closed = False
        self._deadline = 0.0
        self._submitted: list[int] = []
        self._dropped_queue: list[int] = []
        self._tap_stats: dict[int, tuple[int, int]] = {}
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="netwrap-capture", daemon=True)

    @classmethod
    def open(cls, path: str, *, limits: QueueLimits = QueueLimits(), fd: int | None = None) -> CaptureWriter:
        """Open the file (UsageError on a bad path; `fd`: already opened) and wrap it; not started."""
        return cls(CaptureFile.open(path, fd=fd), limits=limits)

    @property
    def path(self) -> str:
        return self._file.path

    def add_interface(self, name: str, linktype: int, description: str) -> int:
        """Add an interface block; allowed before and after start()."""
        with self._file_lock:
            iface = self._file.add_interface(name, linktype, description)
        with self._lock:
            self._submitted.append(0)
            self._dropped_queue.append(0)
        return iface

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------- hot path

    def submit(self, iface_id: int, ts_ns: int, data: bytes) -> bool:
        """Queue one packet (kernel timestamp in ns); never blocks.

        `data` is kept as is, not copied: pass bytes, not a buffer that is
        reused. Returns False when the packet was dropped (and counted).
        """
        n = len(data)
        with self._lock:
            self._submitted[iface_id] += 1
            if (
                self._closed
                or len(self._pending) + self._inflight_packets >= self._max_packets
                or self._pending_bytes + self._inflight_bytes + n > self._max_bytes
            ):
                self._dropped_queue[iface_id] += 1
                return False
            self._pending.append((iface_id, ts_ns, data))
            self._pending_bytes += n
            wake = self._idle
            self._idle = False
        if wake:  # only when the writer sleeps: Event.set costs ~1 µs
            self._wakeup.set()
        return True

    # ------------------------------------------------------------- stopping

    def stop(self, deadline: float, tap_stats: Mapping[int, tuple[int, int]] | None = None) -> CaptureSummary:
        """Drain until `deadline` (time.monotonic()), write statistics, close.

        `tap_stats` maps interface id to (received, dropped) as the tap
        reader counted them; without it, received is what was submitted.
        Whatever is still queued at the deadline is dropped and counted.
        Never raises for file errors; they are in the summary.
        """
        with self._lock:
            self._tap_stats = dict(tap_stats or {})
            self._deadline = deadline
            self._stopping = True
            self._idle = False
        self._wakeup.set()
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()
        self._thread.join(max(0.0, deadline - time.monotonic()) + _CLOSE_GRACE)
        if self._thread.is_alive():
            # Stuck in a write (hung storage): leave the daemon thread; the
            # blocks written so far are whole, only the statistics are missing.
            self._error = self._error or f"capture file {self.path}: writer did not finish in time"
        return self.summary()

    def summary(self) -> CaptureSummary:
        """Counters now; exact once stop() returned."""
        file = self._file
        with self._lock:
            submitted = list(self._submitted)
            dropped_queue = list(self._dropped_queue)
            tap = dict(self._tap_stats)
        ifaces = []
        for iface, name in enumerate(file.interface_names):
            if iface >= len(submitted):  # add_interface() is between its two steps
                break
            captured, nbytes, lost = file.counts(iface)
            ifaces.append(
                InterfaceSummary(
                    id=iface,
                    name=name,
                    captured=captured,
                    bytes=nbytes,
                    dropped_queue=dropped_queue[iface],
                    dropped_tap=tap.get(iface, (0, 0))[1],
                    dropped_write=lost,
                )
            )
        return CaptureSummary(path=file.path, interfaces=tuple(ifaces), error=self._error or file.error)

    # -------------------------------------------------------- writer thread

    def _run(self) -> None:
        try:
            self._drain()
        except Exception as e:  # a bug must not take the run down with it
            self._error = f"capture file {self.path}: writer failed: {e!r}"
        finally:
            self._finish()

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch = self._pending
                if batch:
                    self._pending = []
                    self._inflight_packets = len(batch)
                    self._inflight_bytes = self._pending_bytes
                    self._pending_bytes = 0
                elif self._stopping:
                    return
                else:
                    self._wakeup.clear()
                    self._idle = True
            if not batch:
                self._wakeup.wait()
                continue
            if self._stopping:
                # Slices, so the deadline is checked while a backlog drains.
                for i in range(0, len(batch), _STOP_SLICE):
                    if time.monotonic() >= self._deadline:
                        self._count_dropped(batch[i:])
                        break
                    with self._file_lock:
                        self._file.write_packets(batch[i : i + _STOP_SLICE])
            else:
                with self._file_lock:
                    self._file.write_packets(batch)
            with self._lock:
                self._inflight_packets = 0
                self._inflight_bytes = 0
            if self._stopping and time.monotonic() >= self._deadline:
                return

    def _finish(self) -> None:
        with self._lock:
            self._closed = True  # from now on submit() drops and counts
            leftover = self._pending
            self._pending = []
            self._pending_bytes = self._inflight_packets = self._inflight_bytes = 0
        self._count_dropped(leftover)
        with self._lock:
            stats = {}
            for iface in range(len(self._submitted)):
                received, tap_dropped = self._tap_stats.get(iface, (self._submitted[iface], 0))
                stats[iface] = (received, tap_dropped + self._dropped_queue[iface])
        with self._file_lock:
            self._file.close(stats)

    def _count_dropped(self, packets: list[tuple[int, int, bytes]]) -> None:
        with self._lock:
            for iface, _ts, _data in packets:
                self._dropped_queue[iface] += 1
