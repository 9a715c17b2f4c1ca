"""Startup rows: wall time of `-- true` under netwrap against the raw backend.

Timed inside the world by timer.py, so only the commands are on the clock.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .rows import Result, Target

if TYPE_CHECKING:
    from world.harness import World

TIMER_SOURCE = (Path(__file__).parent / "timer.py").read_text()
STARTUP_TARGET = Target(max_ratio=1.3)
# What pip's `netwrap` console script runs (`python -m` would add runpy's
# few milliseconds, which users of the installed command do not pay).
CONSOLE_SCRIPT = "import sys; from netwrap.cli.main import main; sys.argv[0] = 'netwrap'; main()"


def time_alternately(world: World, user: bool | str, argvs: list[list[str]], runs: int) -> list[list[float]]:
    done = world.run([world.python, "-c", TIMER_SOURCE, json.dumps(argvs), str(runs)], user=user,
                     timeout=60 + runs * 10)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"timer failed ({done.returncode}): {done.stderr[-300:]}") from None
    if "error" in report:
        raise RuntimeError(report["error"])
    return report["samples"]


def startup_pasta(world: World, user: bool | str, runs: int) -> Result:
    """`netwrap --backend pasta -- true` against `pasta --config-net -- true`."""
    ours, anchor = time_alternately(world, user, [
        [world.python, "-c", CONSOLE_SCRIPT, "--backend", "pasta", "--", "true"],
        ["pasta", "--quiet", "--config-net", "--", "true"],
    ], runs)
    ma, mb = statistics.median(ours) * 1000, statistics.median(anchor) * 1000
    ratio = ma / mb
    return Result(row="startup-pasta", metric="wall time of `-- true`, median", netwrap=ma, anchor=mb,
                  anchor_name="pasta --config-net -- true", unit="ms", target=STARTUP_TARGET.describe(),
                  ratio=ratio, meets_target=STARTUP_TARGET.met(ratio),
                  samples={"netwrap": [s * 1000 for s in ours], "anchor": [s * 1000 for s in anchor]})


STARTUP_ROWS: dict[str, Callable[[World, bool | str, int], Result]] = {
    "startup-pasta": startup_pasta,
}
