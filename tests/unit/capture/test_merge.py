"""TimeMerge: rings' packets handed on in timestamp order, and only when safe."""

from netwrap.capture.merge import TimeMerge

HOLD = 20


def test_a_packet_waits_while_another_ring_could_still_deliver_an_earlier_one():
    m = TimeMerge(2, hold_ns=HOLD)
    m.add(1, 105, "synack-on-lo")
    # Ring 0 has delivered nothing yet: at now=110 the SYN-ACK (105) is younger than the hold.
    assert list(m.release(110)) == []
    m.add(0, 100, "syn-on-tun")  # the SYN's block retires later than lo's
    assert list(m.release(112)) == ["syn-on-tun"]  # 105 still waits: ring 0 has shown nothing at or after 105
    assert list(m.release(125)) == ["synack-on-lo"]  # past the hold: ring 0 cannot deliver anything older now


def test_release_is_immediate_when_every_other_ring_has_caught_up():
    m = TimeMerge(2, hold_ns=HOLD)
    m.add(0, 100, "a")
    m.add(1, 101, "b")
    m.add(0, 103, "c")
    assert list(m.release(104)) == ["a", "b"]  # c (103): ring 1's latest is 101, so it may still bring 102
    m.add(1, 103, "d")
    assert list(m.release(104)) == ["c", "d"]


def test_equal_timestamps_keep_ring_order_and_nothing_is_lost():
    m = TimeMerge(3, hold_ns=HOLD)
    for source, ts, item in [(2, 5, "x"), (0, 5, "y"), (1, 4, "z"), (0, 9, "w")]:
        m.add(source, ts, item)
    assert len(m) == 4
    assert list(m.release(0)) == ["z"]  # ring 2 and ring 0 are at 5 and 9, ring 1 at 4: z first
    assert list(m.drain()) == ["y", "x", "w"]
    assert len(m) == 0 and list(m.drain()) == []


def test_a_single_ring_is_handed_on_at_once():
    m = TimeMerge(1, hold_ns=HOLD)
    m.add(0, 1000, "only")
    assert list(m.release(0)) == ["only"]
