"""Rows of the report: a probe, the path under test, its anchor, a target.

A row's ratio is always netwrap / anchor in the probe's unit: for throughput
higher is better (target: ratio >= 0.95), for latency and wall time lower is
better.  The host path's value is the ceiling, reported next to each row.
Targets are reported, never asserted.

To add rows: a RowSpec in extra_rows() (any probe, any two paths), or a
backend in RAW_ANCHORS, or a probe in probes.PROBES (it gets a row per backend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .measure import Measurements
from . import tunrelay
from .paths import HOST, RAW, Path
from .probes import PROBES, Probe


@dataclass(frozen=True)
class Target:
    min_ratio: float | None = None
    max_ratio: float | None = None

    def describe(self) -> str:
        if self.min_ratio is not None:
            return f"ratio >= {self.min_ratio:g}"
        return f"ratio <= {self.max_ratio:g}"

    def met(self, ratio: float) -> bool:
        return ((self.min_ratio is None or ratio >= self.min_ratio)
                and (self.max_ratio is None or ratio <= self.max_ratio))


TARGETS: dict[str, Target | None] = {
    "throughput": Target(min_ratio=0.95),  # the target: netwrap keeps 95% of the raw backend
    "latency": None,  # reported only
}

# The raw form each netwrap backend is held to.  Backends without one of their
# own (tunrelay) are held to every raw backend.
RAW_ANCHORS: dict[str, tuple[str, ...]] = {"pasta": ("raw-pasta",), "slirp4netns": ("raw-slirp4netns",)}
ANCHORS_OTHERWISE: tuple[str, ...] = tuple(p.name for p in RAW.values())


@dataclass(frozen=True)
class RowSpec:
    name: str
    probe: str
    subject: str  # path name under test (netwrap-B)
    anchor: str  # path name it is compared with
    target: Target | None
    missing: str | None = None  # why the subject cannot run (e.g. backend not registered)


@dataclass
class Result:
    row: str
    metric: str
    netwrap: float | None
    anchor: float | None
    anchor_name: str
    unit: str
    target: str
    ratio: float | None
    meets_target: bool | None  # None: no target, or no number to hold to it
    ceiling: float | None = None
    ceiling_name: str = ""
    of_ceiling: float | None = None  # netwrap / host
    note: str = ""
    samples: dict[str, Any] = field(default_factory=dict)


def _anchors_of(backend: str) -> tuple[str, ...]:
    return RAW_ANCHORS.get(backend, ANCHORS_OTHERWISE)


def network_rows(backends: list[str], registered: set[str]) -> list[RowSpec]:
    """A row per probe x backend x anchor.  `backends` may name unregistered ones: their rows
    still show the raw anchor, with the netwrap side marked missing."""
    rows = []
    for probe in PROBES.values():
        for backend in backends:
            anchors = _anchors_of(backend)
            for anchor in anchors:
                suffix = "" if anchors == RAW_ANCHORS.get(backend) else f"-vs-{anchor.removeprefix('raw-')}"
                rows.append(RowSpec(
                    name=f"{probe.name}-{backend}{suffix}", probe=probe.name, subject=f"netwrap-{backend}",
                    anchor=anchor,
                    target=tunrelay.target(probe.name, anchor) if backend == "tunrelay" else TARGETS[probe.kind],
                    missing=None if backend in registered else f"{backend} is not a netwrap backend yet"))
    return rows + extra_rows(backends, registered)


def extra_rows(backends: list[str], registered: set[str]) -> list[RowSpec]:
    """Rows beyond probe x backend: tunrelay's NAT path."""
    return tunrelay.extra_rows(registered) if "tunrelay" in backends else []


NOISY_SPREAD = 1.5  # max/min of a path's samples above which the row says so


def _note(roles: dict[str, Any]) -> str:
    failed = [f"{role} {len(m.errors)}" for role, m in roles.items() if m is not None and m.errors]
    noisy = [f"{role} {m.spread:.1f}" for role, m in roles.items()
             if m is not None and m.spread is not None and m.spread > NOISY_SPREAD]
    return "; ".join(([f"failed runs: {', '.join(failed)}"] if failed else [])
                     + ([f"spread max/min: {', '.join(noisy)}"] if noisy else []))


def evaluate(spec: RowSpec, measurements: Measurements, paths: dict[str, Path]) -> Result:
    probe: Probe = PROBES[spec.probe]
    ours = measurements.get((spec.probe, spec.subject))
    anchor = measurements.get((spec.probe, spec.anchor))
    ceiling = measurements.get((spec.probe, HOST.name))
    value = ours.median if ours else None
    base = anchor.median if anchor else None
    top = ceiling.median if ceiling else None
    ratio = value / base if value is not None and base else None
    note = spec.missing or _note({"netwrap": ours, "anchor": anchor, "host": ceiling})
    return Result(
        row=spec.name, metric=f"{probe.metric}, median", netwrap=value, anchor=base,
        anchor_name=paths[spec.anchor].label, unit=probe.unit,
        target=spec.target.describe() if spec.target else "report only", ratio=ratio,
        meets_target=spec.target.met(ratio) if spec.target and ratio is not None else None,
        ceiling=top, ceiling_name=HOST.label, of_ceiling=value / top if value is not None and top else None,
        note=note,
        samples={name: m.samples for name, m in (("netwrap", ours), ("anchor", anchor), ("ceiling", ceiling)) if m},
    )
