"""tunrelay's place in the benchmark: its own targets, its second TCP path, and wrk.

tunrelay has no raw form of its own, so its rows hold it to the raw backends
(rows.network_rows does that for `netwrap --backend tunrelay`, which takes the
TPROXY fast path when nftables is there).  The issue sets its targets, one
stream each direction, per anchor:

  fast path (tproxy) TCP throughput   >= 2.0x slirp4netns, >= 0.8x pasta
  TUN NAT path TCP throughput         >= 0.5x slirp4netns
  sockperf round trip (TCP and UDP)   <= 1.5x pasta
  wrk req/s, 100 connections          >= slirp4netns

Reported, never asserted.
"""

from __future__ import annotations

from .paths import Netwrap, Path
from .wrk import WRK

NAT = Netwrap("netwrap-tunrelay-nat", "netwrap --backend tunrelay --tunrelay-tcp nat", backend="tunrelay",
              args=("--tunrelay-tcp", "nat"))

# (probe, anchor) -> (min ratio, max ratio) for `netwrap --backend tunrelay` (the fast path).
FAST_TARGETS: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("tcp-up-1", "raw-slirp4netns"): (2.0, None),
    ("tcp-down-1", "raw-slirp4netns"): (2.0, None),
    ("tcp-up-1", "raw-pasta"): (0.8, None),
    ("tcp-down-1", "raw-pasta"): (0.8, None),
    ("lat-tcp", "raw-pasta"): (None, 1.5),
    ("lat-udp", "raw-pasta"): (None, 1.5),
    (WRK.name, "raw-slirp4netns"): (1.0, None),
}


def target(probe: str, anchor: str):
    """The target of a `netwrap --backend tunrelay` row: the issue's where it
    sets one, else none (reported only)."""
    from .rows import Target

    bounds = FAST_TARGETS.get((probe, anchor))
    return None if bounds is None else Target(min_ratio=bounds[0], max_ratio=bounds[1])


def extra_paths() -> list[Path]:
    return [NAT]


def extra_rows(registered: set[str]) -> list:
    """The NAT path against slirp4netns, one stream each way."""
    from .rows import RowSpec, Target

    missing = None if "tunrelay" in registered else "tunrelay is not a netwrap backend yet"
    return [RowSpec(name=f"{probe}-tunrelay-nat-vs-slirp4netns", probe=probe, subject=NAT.name,
                    anchor="raw-slirp4netns", target=Target(min_ratio=0.5), missing=missing)
            for probe in ("tcp-up-1", "tcp-down-1")]
