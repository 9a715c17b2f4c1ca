"""One pcapng capture file: section header, interfaces, packets, statistics.

`CaptureFile` owns the output file of `--capture`. It is opened, and so
validated, before the command starts; it writes only whole blocks, so the file
on disk is a valid pcapng file after every write call returns. A SIGKILL can
still land inside a write and cut it short; the `TailGuard` process then cuts
the file back to its last whole block, so a killed netwrap leaves a file that
tshark reads. When a write fails (ENOSPC, EIO, EFBIG, ...) the file is
truncated back to its last whole block, writing stops, the error is recorded
and the packets that could not be stored are counted; nothing is raised into
the caller.

python-pcapng writes the section header, interface description and interface
statistics blocks: those are rare, carry options, and the library gets their
encoding right. Enhanced packet blocks, the hot path, are packed here with
`struct` (see `_EPB` for the measured numbers behind that choice).

The module imports python-pcapng only when a file is opened: it costs ~20 ms,
and a run without `--capture` must not pay for it.
"""

from __future__ import annotations

import bisect
import collections
import errno
import fcntl
import io
import os
import struct
import time
from typing import Iterable, Mapping

from netwrap import __version__
from netwrap.errors import UsageError
from netwrap.linux.outputs import check_output_path
from netwrap.capture.tail_guard import TailGuard

# Link types (https://www.tcpdump.org/linktypes.html) the capture views use.
LINKTYPE_ETHERNET = 1  # the mirror tap: Ethernet frames
LINKTYPE_RAW = 101  # bare IPv4/IPv6 packets (TUN, synthesised egress view)

APPLICATION = f"netwrap {__version__}"

# Enhanced Packet Block, little-endian like the section header python-pcapng
# writes by default: block type 6, total length, interface id, timestamp
# high/low, captured length, original length; then the data, padding to 4
# bytes, and the total length again.
#
# Why hand-packed: measured on the dev VM (Python 3.11, python-pcapng 2.1.1,
# `benchmarks/micro_capture.py --encode-only`, in memory), one EPB costs
#                     python-pcapng (new_member + write_block)   struct here
#   1500-byte packet  ~22 µs   (43-48 k packets/s)             ~0.6 µs (1.7-1.8 M/s)
#   65535-byte packet ~135 µs  (7.3-7.5 k packets/s)           ~4.5 µs (220-230 k/s)
# 1 Gbit/s of 1500-byte TCP segments is 83 k packets/s: the library alone
# would need more than a whole CPU for it, before the tap is even read.
# The block layout is fixed by the pcapng spec (section 4.3) and has no
# options here, so packing it by hand gives up nothing the library checks.
_EPB = struct.Struct("<7I")
_EPB_TYPE = 6
_EPB_OVERHEAD = _EPB.size + 4  # header + trailing total length
_TRAILER = [struct.Struct(f"<{pad}xI") for pad in range(4)]

# if_tsresol = 9: timestamps count nanoseconds, the kernel's own resolution
# (SO_TIMESTAMPNS), so nothing is rounded away.
_TSRESOL_NS = b"\x09"

# Packets are packed and joined, then written, in chunks of about this size:
# big enough that syscalls do not matter, small enough that the joined copy
# does not either.
_CHUNK_BYTES = 1 << 20

# How many recent packet blocks are remembered, so that after ENOSPC the tail
# can be cut to make room for the interface statistics.
_TAIL_BLOCKS = 2048
_SPACE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

# How long open() waits for another process's lock on the file.
_LOCK_WAIT = 2.0


class CaptureFile:
    """A pcapng file being written; single-threaded (CaptureWriter serialises)."""

    __slots__ = (
        "path",
        "_fd",
        "_size",
        "_error",
        "_shb",
        "_writer",
        "_pcapng_blocks",
        "_names",
        "_idbs_in_file",
        "_packets",
        "_bytes",
        "_lost",
        "_tail",
        "_start_ns",
        "_last_errno",
        "_guard",
    )

    def __init__(self, path: str, fd: int, guard: TailGuard | None = None) -> None:
        """Use `CaptureFile.open`; this takes over an opened, empty file."""
        import pcapng  # ~20 ms; only runs with --capture
        import pcapng.blocks

        self.path = path
        self._fd = fd
        self._guard = guard
        self._size = 0
        self._error: str | None = None
        self._last_errno = 0
        self._pcapng_blocks = pcapng.blocks
        self._names: list[str] = []
        self._idbs_in_file = 0
        self._packets: list[int] = []
        self._bytes: list[int] = []
        self._lost: list[int] = []
        self._tail: collections.deque[tuple[int, int, int]] = collections.deque(maxlen=_TAIL_BLOCKS)
        self._start_ns = time.time_ns()
        uname = os.uname()
        self._shb = pcapng.blocks.SectionHeader(
            endianness="<",
            options={
                "shb_hardware": uname.machine,
                "shb_os": f"{uname.sysname} {uname.release}",
                "shb_userappl": APPLICATION,
            },
        )
        # The library writes into memory; the bytes reach the file through
        # _append_block, so every block goes through one error path.
        scratch = io.BytesIO()
        self._writer = pcapng.FileWriter(scratch, self._shb)
        self._append_block(scratch.getvalue())  # failure: see .error

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CaptureFile:
        """Create (or truncate) `path` and write the section header.

        Raises UsageError with one line when the path cannot be a capture
        file; called while validating flags, before anything starts.
        """
        path = os.fspath(path)
        # Truncation after an error needs a regular file; a FIFO would
        # also block the open until a reader comes.
        check_output_path(path, label="capture file")
        try:
            # Not O_TRUNC: the file may still be held by the guard of a run
            # that just died; truncate once its lock is ours.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UsageError(f"capture file {path}: {e.strerror}") from None
        guard = None
        try:
            _lock(fd, path)
            os.ftruncate(fd, 0)
            try:
                guard = TailGuard(fd)
            except OSError:
                guard = None  # no guard: a SIGKILL mid-write may cut a block
            capture = cls(path, fd, guard)
        except OSError as e:
            if guard is not None:
                guard.release()
            os.close(fd)
            raise UsageError(f"capture file {path}: {e.strerror}") from None
        except BaseException:
            if guard is not None:
                guard.release()
            os.close(fd)
            raise
        if capture.error is not None:  # e.g. the disk is already full
            capture.close(fsync=False)
            raise UsageError(capture.error)
        return capture

    # ------------------------------------------------------------------ state

    @property
    def error(self) -> str | None:
        """The first write error, as one line, or None."""
        return self._error

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def size(self) -> int:
        """Bytes of whole blocks in the file."""
        return self._size

    @property
    def interface_names(self) -> tuple[str, ...]:
        return tuple(self._names)

    def counts(self, iface_id: int) -> tuple[int, int, int]:
        """(packets stored, bytes stored, packets lost to write errors)."""
        return self._packets[iface_id], self._bytes[iface_id], self._lost[iface_id]

    # ------------------------------------------------------------- interfaces

    def add_interface(self, name: str, linktype: int, description: str, *, snaplen: int = 0) -> int:
        """Describe one captured interface; returns the id packets refer to.

        snaplen 0 means "no limit" (pcapng spec 4.2): tap packets can be
        64 KiB GSO segments.
        """
        self._check_open()
        idb = self._shb.new_member(
            self._pcapng_blocks.InterfaceDescription,
            link_type=linktype,
            snaplen=snaplen,
            options={"if_name": name, "if_description": description, "if_tsresol": _TSRESOL_NS},
        )
        # python-pcapng 2.1 declares if_tsresol without a type and warns
        # (DeprecationWarning) on every encode; say "bytes" for this block
        # only, rather than touching the process-wide warning filters.
        tsresol = idb.options.schema[9]
        idb.options.schema[9] = tsresol._replace(ftype="bytes")
        iface_id = idb.interface_id
        self._names.append(name)
        self._packets.append(0)
        self._bytes.append(0)
        self._lost.append(0)
        scratch = io.BytesIO()
        self._writer.stream = scratch
        self._writer.write_block(idb)
        if self._append_block(scratch.getvalue()):
            self._idbs_in_file += 1
            # Packets before an interface block cannot be cut without it.
            self._tail.clear()
        return iface_id

    # ---------------------------------------------------------------- packets

    def write_packet(self, iface_id: int, ts_ns: int, data: bytes, orig_len: int | None = None) -> bool:
        """Write one packet now; False if it could not be stored (counted)."""
        return self.write_packets([(iface_id, ts_ns, data)], orig_len=orig_len) == 1

    def write_packets(self, packets: Iterable[tuple[int, int, bytes]], *, orig_len: int | None = None) -> int:
        """Write (iface_id, ts_ns, data) packets in order; returns how many were stored.

        Packets that cannot be stored because the file failed are counted as
        lost for their interface. `orig_len` (all packets) defaults to each
        packet's own length.
        """
        self._check_open()
        n_ifaces = len(self._names)
        stored = 0
        chunk: list[bytes] = []
        blocks: list[tuple[int, int, int]] = []  # (start offset, iface, data length)
        off = start = self._size
        pack = _EPB.pack
        trailers = _TRAILER
        for iface, ts, data in packets:
            if not 0 <= iface < n_ifaces:
                raise ValueError(f"unknown interface id {iface}")
            if self._error is not None:
                self._lost[iface] += 1
                continue
            n = len(data)
            pad = -n & 3
            blen = _EPB_OVERHEAD + n + pad
            chunk.append(pack(_EPB_TYPE, blen, iface, ts >> 32, ts & 0xFFFFFFFF, n, max(orig_len or n, n)))
            chunk.append(data)
            chunk.append(trailers[pad].pack(blen))
            blocks.append((off, iface, n))
            off += blen
            if off - start >= _CHUNK_BYTES:
                stored += self._commit(chunk, blocks, start)
                chunk, blocks, off, start = [], [], self._size, self._size
        if chunk:
            stored += self._commit(chunk, blocks, start)
        return stored

    def _commit(self, chunk: list[bytes], blocks: list[tuple[int, int, int]], start: int) -> int:
        """Write one chunk of packet blocks; keep only whole blocks on failure."""
        buf = b"".join(chunk)
        done = self._pwrite(buf, start)
        if done == len(buf):
            kept, end = len(blocks), start + done
        else:
            # Keep the blocks that reached the file whole; cut the partial one.
            ends = [b[0] for b in blocks[1:]]
            ends.append(start + len(buf))
            kept = bisect.bisect_right(ends, start + done)
            end = ends[kept - 1] if kept else start
            if done:
                self._truncate(end)
        self._set_size(end)
        packets, nbytes, lost = self._packets, self._bytes, self._lost
        for i, (_off, iface, n) in enumerate(blocks):
            if i < kept:
                packets[iface] += 1
                nbytes[iface] += n
            else:
                lost[iface] += 1
        self._tail.extend(blocks[max(0, kept - _TAIL_BLOCKS) : kept])
        return kept

    # -------------------------------------------------------------- closing

    def close(self, stats: Mapping[int, tuple[int, int]] | None = None, *, fsync: bool = True) -> None:
        """Write interface statistics, flush to disk and close; idempotent.

        `stats` maps interface id to (received, dropped) as counted before the
        file (tap/kernel, queue). Each interface gets an Interface Statistics
        Block with isb_ifrecv = received (default: packets stored + lost),
        isb_ifdrop = dropped + packets lost to write errors, isb_usrdeliv =
        packets stored. Errors are recorded, not raised.
        """
        if self._fd < 0:
            return
        try:
            if self._idbs_in_file:
                self._write_statistics(dict(stats or {}))
            if fsync:
                try:
                    os.fsync(self._fd)
                except OSError as e:
                    self._record(e)
        finally:
            # The statistics are in (or recorded as missing): the guard has
            # nothing left to repair. Its lock ends with it.
            if self._guard is not None:
                self._guard.release()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_statistics(self, stats: dict[int, tuple[int, int]]) -> None:
        # After ENOSPC there may be no room left for the statistics: cut
        # packets off the tail (counted as lost) until they fit. The drop
        # counts are what a full disk makes most worth keeping.
        need = 0
        for _attempt in range(8):
            data = self._encode_statistics(stats)
            if self._append_block(data, even_after_error=True):
                return
            # Cutting packets only helps when space was the problem.
            need = max(need * 2, len(data) + 4096)
            if self._last_errno not in _SPACE_ERRORS or not self._cut_tail(need):
                break
        self._error = (self._error or "write failed") + "; interface statistics not written"

    def _encode_statistics(self, stats: dict[int, tuple[int, int]]) -> bytes:
        now = time.time_ns()
        scratch = io.BytesIO()
        self._writer.stream = scratch
        for iface in range(self._idbs_in_file):
            stored, lost = self._packets[iface], self._lost[iface]
            received, dropped = stats.get(iface, (stored + lost, 0))
            isb = self._shb.new_member(
                self._pcapng_blocks.InterfaceStatistics,
                interface_id=iface,
                timestamp_high=now >> 32,
                timestamp_low=now & 0xFFFFFFFF,
                options={
                    "isb_starttime": self._start_ns,
                    "isb_endtime": now,
                    "isb_ifrecv": received,
                    "isb_ifdrop": dropped + lost,
                    "isb_usrdeliv": stored,
                },
            )
            self._writer.write_block(isb)
        return scratch.getvalue()

    def _cut_tail(self, need: int) -> bool:
        """Drop recent packet blocks until `need` bytes are freed; False if none left."""
        if not self._tail:
            return False
        size = self._size
        while self._tail and self._size - size < need:
            size, iface, n = self._tail.pop()
            self._packets[iface] -= 1
            self._bytes[iface] -= n
            self._lost[iface] += 1
        self._set_size(size)
        return self._truncate(size)

    # ------------------------------------------------------------ raw output

    def _append_block(self, data: bytes, *, even_after_error: bool = False) -> bool:
        """Append whole blocks from the library; all or nothing."""
        if self._error is not None and not even_after_error:
            return False
        done = self._pwrite(data, self._size)
        if done == len(data):
            self._set_size(self._size + done)
            return True
        if done:
            self._truncate(self._size)
        return False

    def _pwrite(self, buf: bytes, offset: int) -> int:
        """Write all of buf at offset; returns bytes written (less on error)."""
        view = memoryview(buf)
        done, total = 0, len(view)
        while done < total:
            try:
                n = os.pwrite(self._fd, view[done:], offset + done)
            except OSError as e:
                self._record(e)  # keeps the first error only
                break
            if n == 0:  # never for a regular file; do not spin if it happens
                self._record(OSError(errno.EIO, "write made no progress"))
                break
            done += n
        return done

    def _set_size(self, size: int) -> None:
        self._size = size
        if self._guard is not None:
            self._guard.commit(size)

    def _truncate(self, size: int) -> bool:
        # Explicit offsets (pwrite) mean no file position to fix afterwards.
        try:
            os.ftruncate(self._fd, size)
        except OSError as e:
            self._record(e, "truncating")
            return False
        return True

    def _record(self, e: OSError, doing: str = "writing") -> None:
        self._last_errno = e.errno or 0
        name = errno.errorcode.get(e.errno or 0, "")
        what = f"{e.strerror or e} ({name})" if name else str(e.strerror or e)
        msg = f"capture file {self.path}: {what} while {doing}"
        self._error = msg if self._error is None else self._error

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError("capture file is closed")


def _lock(fd: int, path: str) -> None:
    """Take the file's flock; the guard of a run that just died may hold it briefly."""
    give_up = time.monotonic() + _LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= give_up:
                raise UsageError(f"capture file {path}: in use by another netwrap") from None
            time.sleep(0.02)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
                return  # no locks on this filesystem: go without
            raise


def describe_interface(*, view: str, backend: str, detail: str = "") -> str:
    """The if_description naming view and backend, e.g. for capinfos.

    "netwrap view=child backend=pasta: what the command sent and received"
    """
    text = f"netwrap view={view} backend={backend}"
    return f"{text}: {detail}" if detail else text
