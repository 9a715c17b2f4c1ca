"""Packets of several rings, handed on in timestamp order (sans I/O).

Each packet ring delivers its own packets in order, but a ring hands a block
over only when it is full or RETIRE_MS after its first packet, so two rings
read one after the other interleave badly: a SYN-ACK seen on the sandbox's lo
could be written before the SYN that left by the backend's interface, and
Wireshark would then report loss and retransmissions that never happened.

A packet is safe to hand on when no ring can still deliver an earlier one:
every other ring has already delivered a packet at least as late, or the
packet is older than `hold_ns`, the longest a ring can keep a packet in an
unretired block (the retire timeout plus the kernel timer's slack). `now_ns`
must be taken *before* the rings are read, so that every block retired by
then has been read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_NEVER = -(1 << 63)


class TimeMerge(Generic[T]):
    def __init__(self, sources: int, *, hold_ns: int) -> None:
        self._queues: list[deque[tuple[int, T]]] = [deque() for _ in range(sources)]
        self._latest = [_NEVER] * sources
        self._hold_ns = hold_ns

    def add(self, source: int, ts_ns: int, item: T) -> None:
        self._queues[source].append((ts_ns, item))
        if ts_ns > self._latest[source]:
            self._latest[source] = ts_ns

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues)

    def release(self, now_ns: int) -> Iterator[T]:
        """The items that can no longer be preceded by one still to come, oldest first."""
        old_enough = now_ns - self._hold_ns
        while True:
            source = self._oldest()
            if source is None:
                return
            ts = self._queues[source][0][0]
            if ts > old_enough and any(latest < ts for s, latest in enumerate(self._latest) if s != source):
                return
            yield self._queues[source].popleft()[1]

    def drain(self) -> Iterator[T]:
        """Every item, oldest first: nothing more will be added."""
        while (source := self._oldest()) is not None:
            yield self._queues[source].popleft()[1]

    def _oldest(self) -> int | None:
        best, best_ts = None, None
        for source, queue in enumerate(self._queues):
            if queue and (best_ts is None or queue[0][0] < best_ts):
                best, best_ts = source, queue[0][0]
        return best
