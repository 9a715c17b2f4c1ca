"""netwrap.dns.stream: DNS messages on a TCP stream, cut from bytes however they arrive."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netwrap.dns import stream
from netwrap.dns.message import DNSFormatError


def test_frame_prefixes_the_length_in_network_order():
    assert stream.frame(b"\x12\x34" + b"x" * 10) == b"\x00\x0c\x12\x34xxxxxxxxxx"
    assert stream.frame(b"y" * 0x1234)[:2] == b"\x12\x34"


@pytest.mark.parametrize("size", [0, 0x10000])
def test_frame_refuses_what_two_bytes_cannot_say(size):
    with pytest.raises(DNSFormatError):
        stream.frame(b"z" * size)


def test_two_pipelined_messages_in_one_read():
    d = stream.Deframer()
    assert d.feed(b"\x00\x03abc\x00\x02de") == [b"abc", b"de"]
    assert d.buffered == 0


def test_a_message_split_inside_its_length_and_its_body():
    d = stream.Deframer()
    assert d.feed(b"\x00") == []
    assert d.feed(b"\x05he") == []
    assert d.buffered == 4  # its length and two bytes of it
    assert d.feed(b"llo\x00") == [b"hello"]
    assert d.buffered == 1  # the next message's first length byte
    assert d.feed(b"\x01!") == [b"!"]


def test_zero_length_is_refused():
    with pytest.raises(DNSFormatError):
        stream.Deframer().feed(b"\x00\x00")


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.data())
def test_any_split_gives_back_the_messages(messages, data):
    wire = b"".join(stream.frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    d = stream.Deframer()
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        got += d.feed(wire[start:end])
    assert got == messages
    assert d.buffered == 0
