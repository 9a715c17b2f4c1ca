"""netwrap's benchmark runner: each row measured side by side with its anchor.

    python benchmarks/run.py [--runs N] [--user NAME] [--only ROW] [--json FILE]

Each row runs netwrap and the anchor it is compared with (raw pasta, raw
slirp4netns, the host) alternately in the same run, and reports the median of
each and their ratio against the row's target. Results are reported, never
asserted: a slow machine is not a failing test.

Run as root with --user NAME to measure the rootless path (the default for
real users) as that user; run unprivileged to measure as yourself.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


@dataclass
class Result:
    row: str
    metric: str
    netwrap: float
    anchor: float
    anchor_name: str
    unit: str
    target: str
    ratio: float
    meets_target: bool
    samples: dict = field(default_factory=dict)


@dataclass
class Context:
    runs: int
    user: str | None
    python: str

    def as_user(self, argv: list[str]) -> list[str]:
        if self.user is None or os.geteuid() != 0:
            return argv
        entry = pwd.getpwnam(self.user)
        return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
                "--reset-env", "env", f"HOME={self.home}", *argv]

    @property
    def home(self) -> str:
        return pwd.getpwnam(self.user).pw_dir if self.user else os.environ.get("HOME", "/")

    def netwrap(self, *args: str) -> list[str]:
        return self.as_user([self.python, "-m", "netwrap", *args])


def _time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[-300:]}")
    return elapsed


def startup_pasta(ctx: Context) -> Result:
    """`netwrap --backend pasta -- true` against `pasta --config-net -- true`."""
    ours = ctx.netwrap("--backend", "pasta", "--", "true")
    anchor = ctx.as_user(["pasta", "--quiet", "--config-net", "--", "true"])
    for argv in (ours, anchor):  # warm caches (probe cache, page cache)
        _time_once(argv)
    a, b = [], []
    for _ in range(ctx.runs):  # alternate, so drift hits both alike
        a.append(_time_once(ours))
        b.append(_time_once(anchor))
    ma, mb = statistics.median(a), statistics.median(b)
    ratio = ma / mb
    return Result(row="startup-pasta", metric="wall time of `-- true` (median)", netwrap=ma * 1000,
                  anchor=mb * 1000, anchor_name="pasta --config-net -- true", unit="ms", target="ratio <= 1.3",
                  ratio=ratio, meets_target=ratio <= 1.3, samples={"netwrap": a, "anchor": b})


ROWS: dict[str, Callable[[Context], Result]] = {
    "startup-pasta": startup_pasta,
}


def table(results: list[Result]) -> str:
    out = ["| row | metric | netwrap | anchor | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for r in results:
        out.append(f"| {r.row} | {r.metric} | {r.netwrap:.1f} {r.unit} | {r.anchor:.1f} {r.unit} ({r.anchor_name}) "
                   f"| {r.ratio:.2f} | {r.target} | {'yes' if r.meets_target else 'no'} |")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=21)
    p.add_argument("--user", help="as root: measure rootless, as this user")
    p.add_argument("--only", action="append", choices=sorted(ROWS))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs netwrap")
    args = p.parse_args()
    ctx = Context(runs=args.runs, user=args.user, python=args.python)
    results = [ROWS[name](ctx) for name in (args.only or ROWS)]
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
