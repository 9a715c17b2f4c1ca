"""The Internet checksum, written out naively as a reference for tests.

Summed word by word with end-around carry (RFC 1071 section 4.1, literally),
importing nothing from netwrap, so a bug shared by the code under test and
its tests is unlikely. Shared by the tunrelay and capture tests.
"""

from __future__ import annotations


def ref_sum(data: bytes) -> int:
    """The folded 16-bit one's-complement sum (0xFFFF over data whose checksum verifies)."""
    if len(data) % 2:
        data = data + b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ref_csum(data: bytes) -> int:
    """The checksum field's value: the complement of ref_sum."""
    return ~ref_sum(data) & 0xFFFF
