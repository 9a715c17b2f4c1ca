"""The tests' reference checksum against RFC 1071's own worked example (section 3)."""

from inet_checksum import ref_csum, ref_sum


def test_rfc1071_numerical_example():
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ref_sum(data) == 0xDDF2
    assert ref_csum(data) == 0x220D


def test_odd_length_is_padded_with_a_zero_byte():
    assert ref_sum(b"\x12\x34\x56") == 0x1234 + 0x5600
