"""DNS over TCP framing (RFC 1035 section 4.2.2, RFC 7766): bytes in, messages out.

On a stream every message is preceded by its length as two bytes in network
order, and a client may send several queries on one connection, pipelined,
without waiting for answers. Pure code: the DNS proxy feeds what it read
from either end of a connection and gets whole messages back.
"""

from __future__ import annotations

import struct

from netwrap.dns.message import DNSFormatError

MAX_MESSAGE = 0xFFFF  # what two length bytes can say
_LENGTH = struct.Struct("!H")


def frame(message: bytes) -> bytes:
    """`message` as it goes on a stream: its length, then itself."""
    if not message or len(message) > MAX_MESSAGE:
        raise DNSFormatError(f"a DNS message on a stream is 1 to {MAX_MESSAGE} bytes, not {len(message)}")
    return _LENGTH.pack(len(message)) + message


class Deframer:
    """Cuts one direction of a stream into messages, however its bytes arrive.

    Memory is bounded by one message (at most 64 KiB plus the read in hand).
    A zero length is no DNS message: DNSFormatError, and the connection
    should be closed.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of a message not complete yet (0: the stream is at a message boundary)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The messages that `data` completes, in order."""
        self._buffer += data
        out: list[bytes] = []
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length == 0:
                raise DNSFormatError("a zero-length message on a DNS stream")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                break
            out.append(bytes(self._buffer[_LENGTH.size:end]))
            del self._buffer[:end]
        return out
