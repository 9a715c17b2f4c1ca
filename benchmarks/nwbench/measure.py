"""Running probes over paths, alternating, and keeping every sample.

Each repetition runs every (probe, path) pair once; within a probe the paths
take turns, and the order rotates between repetitions, so a drift of the
machine (another process, thermal, page cache) hits netwrap and its anchor
alike.  A failed run is recorded with its reason and the run goes on.
"""

from __future__ import annotations

import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .parse import ParseError
from .paths import Path
from .probes import Endpoint, Probe

if TYPE_CHECKING:
    from world.harness import World


@dataclass
class Measurement:
    probe: str
    path: str
    unit: str
    samples: list[float] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def spread(self) -> float | None:
        """max/min of the samples: how much the runs disagreed (1.0: not at all)."""
        if len(self.samples) < 2 or min(self.samples) <= 0:
            return None
        return max(self.samples) / min(self.samples)


Measurements = dict[tuple[str, str], Measurement]  # (probe name, path name) -> Measurement


def run_once(world: World, user: bool | str, probe: Probe, path: Path, server: Endpoint,
             seconds: float) -> tuple[float, dict[str, Any]]:
    """One client run of `probe` over `path`; ParseError/RuntimeError when it yields no number."""
    client = probe.client(server, seconds)
    with path.running(world, user) as wrap:
        argv = wrap(client)
        try:
            done = world.run(argv, user=user, timeout=seconds + probe.overhead + 30)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timed out: {' '.join(client)}") from None
    try:
        return probe.parse(done.stdout)
    except ParseError as exc:
        tail = done.stderr.strip()[-300:]
        raise ParseError(f"{exc} (exit {done.returncode}{'; ' + tail if tail else ''})") from None


def measure(world: World, user: bool | str, plan: list[tuple[Probe, list[Path]]],
            endpoints: dict[str, Endpoint], reps: int, seconds: float,
            log: Callable[[str], None] = print) -> Measurements:
    results: Measurements = {}
    for probe, paths in plan:
        for path in paths:
            results[probe.name, path.name] = Measurement(probe.name, path.name, probe.unit)
    for rep in range(reps):
        for probe, paths in plan:
            shift = rep % len(paths)
            for path in paths[shift:] + paths[:shift]:
                m = results[probe.name, path.name]
                try:
                    value, details = run_once(world, user, probe, path, endpoints[probe.server], seconds)
                except (ParseError, RuntimeError, OSError) as exc:
                    m.errors.append(str(exc))
                    log(f"  {probe.name:<12} {path.name:<22} failed: {exc}")
                    continue
                m.samples.append(value)
                m.details.append(details)
                log(f"  {probe.name:<12} {path.name:<22} {value:10.2f} {probe.unit}")
    return results
