"""The deterministic byte stream behind the world's `/bytes/N` path.

Both sides compute it: worldd streams it, and a test computes the expected
SHA-256 of N bytes without any data on disk.  Block k is a rotation of one
64 KiB pseudo-random block by k*STRIDE bytes; STRIDE is odd, so the first
65536 blocks (4 GiB) are all different, and a relay that drops, repeats or
reorders whole blocks changes the digest.  Blocks are memoryview slices of a
doubled base, so producing them copies nothing (200 MiB streams at wire speed).
stdlib only: worldd imports this.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

BLOCK_SIZE = 65536
STRIDE = 4099
_BASE = hashlib.shake_256(b"netwrap test world byte stream v1").digest(BLOCK_SIZE)
_TWICE = memoryview(_BASE + _BASE)


def block(index: int) -> memoryview:
    """Block `index` of the stream (BLOCK_SIZE bytes)."""
    offset = (index * STRIDE) % BLOCK_SIZE
    return _TWICE[offset : offset + BLOCK_SIZE]


def chunks(size: int) -> Iterator[memoryview]:
    """The first `size` bytes of the stream, in blocks."""
    if size < 0:
        raise ValueError("size must be >= 0")
    index = 0
    while size > 0:
        piece = block(index)
        if size < BLOCK_SIZE:
            piece = piece[:size]
        yield piece
        size -= len(piece)
        index += 1


def data(size: int) -> bytes:
    """The first `size` bytes as one bytes object (for small sizes)."""
    return b"".join(chunks(size))


def sha256_hex(size: int) -> str:
    """SHA-256 (hex) of the first `size` bytes, what `/bytes/<size>` serves."""
    digest = hashlib.sha256()
    for piece in chunks(size):
        digest.update(piece)
    return digest.hexdigest()
