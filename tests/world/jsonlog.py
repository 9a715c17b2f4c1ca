"""Append-only JSON-lines logs, written by the daemons, read by the harness.

One JSON object per line, written with a single write() on an O_APPEND fd
while holding a lock, so concurrent handler threads never interleave and a
reader never sees half a line once the writer has returned.  Daemons log a
request *before* answering it, so a client that got its answer can rely on
the line being there.  stdlib only: worldd imports this.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any


class JsonLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._lock = threading.Lock()

    def write(self, **fields: Any) -> None:
        record = {"time": round(time.time(), 6), **fields}
        line = (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)


def read_records(path: str, offset: int = 0) -> list[dict[str, Any]]:
    """Complete records of `path` from byte `offset` on ([] if it does not exist)."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read()
    except FileNotFoundError:
        return []
    # A line still being written has no newline yet; leave it for the next read.
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def size_of(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0
