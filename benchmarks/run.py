"""netwrap's benchmark runner: each row measured side by side with its anchor.

    sudo /opt/netwrap-venv/bin/python benchmarks/run.py [--quick] [--reps N] [--seconds S]
        [--runs N] [--backends B,...] [--only GLOB ...] [--user NAME] [--out DIR] [--json FILE] [--list]

Everything runs inside a test world of its own (tests/world: a host namespace
whose only uplink is an "internet" namespace), so benchmark traffic never
leaves the namespaces this run creates.  Servers (iperf3, sockperf) run in the
internet namespace on the world address; every client runs in the world's
host namespace, as the world's unprivileged test user (the rootless path),
over each path:

  host                 the client with no backend at all: the ceiling
  raw-pasta            pasta --config-net -- CLIENT
  raw-slirp4netns      unshare -rn holder + slirp4netns --configure --mtu=65520, nsenter
  netwrap-B            netwrap --backend B -- CLIENT, for every built-in backend B

Probes: TCP throughput up and down (client sends / -R), 1 and 4 streams
(iperf3 --json, receiver's count); TCP and UDP round trip (sockperf
ping-pong --full-rtt); plus the startup row (`-- true`) and the publish rows
(iperf3's server inside, its client in the internet namespace, through a
published port: nwbench/publish.py).  Each repetition runs
every path once per probe, alternating, and rows report medians, netwrap /
anchor ratios against the row's target, and the host ceiling.  Results are
reported, never asserted: a slow machine is not a failing test.

Outputs: the markdown table on stdout (progress on stderr), and in --out
(default benchmarks/results/<timestamp>/): results.md, results.json, chart.png.
Needs root (the world builds namespaces).  The default run takes ~7 minutes on
2 cores; --quick (1 repetition of 2 s, 5 startup runs) about 2.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for entry in (HERE, REPO / "tests"):  # nwbench; the test world
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from nwbench import measure, paths, probes, report, rows  # noqa: E402
from nwbench.publish import PUBLISH_ROWS  # noqa: E402
from nwbench.startup import STARTUP_ROWS  # noqa: E402


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"


def machine_meta() -> dict[str, Any]:
    return {
        "machine": f"{platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs",
        "versions": {
            "netwrap": _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
            "iperf3": _output(["iperf3", "--version"]),
            "sockperf": _output(["sockperf", "--version"]),
            # pasta's Debian build prints "unknown version": ask the package.
            "passt": _output(["dpkg-query", "-W", "-f", "${Version}", "passt"]),
            "slirp4netns": _output(["slirp4netns", "--version"]),
        },
    }


def plan_network(specs: list[rows.RowSpec], all_paths: dict[str, paths.Path]
                 ) -> list[tuple[probes.Probe, list[paths.Path]]]:
    """Per probe, the paths its rows need: host first, then each anchor next to its subject."""
    plan = []
    for probe in probes.PROBES.values():
        names = [paths.HOST.name]
        for spec in specs:
            if spec.probe == probe.name:
                names += [spec.anchor] + ([spec.subject] if spec.missing is None else [])
        if len(names) > 1:
            plan.append((probe, [all_paths[n] for n in dict.fromkeys(names)]))
    return plan


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 repetition of 2 s, 5 startup runs (~2 minutes)")
    p.add_argument("--reps", type=int, help="repetitions of every network measurement (default 3)")
    p.add_argument("--seconds", type=float, help="duration of each iperf3/sockperf run (default 3)")
    p.add_argument("--runs", type=int, help="startup rows: timed runs of each side (default 21)")
    p.add_argument("--backends", help="comma-separated netwrap backends to build rows for "
                   "(default: every built-in one, and slirp4netns regardless)")
    p.add_argument("--only", action="append", metavar="GLOB", help="rows to run (repeatable), e.g. 'tcp-*-pasta'")
    p.add_argument("--user", help="run as this user instead of the world's test user ('root': rootful)")
    p.add_argument("--out", help="output directory (default benchmarks/results/<timestamp>)")
    p.add_argument("--json", help="also write results.json here")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    args = p.parse_args(argv)
    quick = args.quick
    args.reps = args.reps or (1 if quick else 3)
    args.seconds = args.seconds or (2.0 if quick else 3.0)
    args.runs = args.runs or (5 if quick else 21)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from netwrap.backends import BUILTIN

    registered = set(BUILTIN)
    backends = (args.backends.split(",") if args.backends
                else list(dict.fromkeys([*BUILTIN, *rows.RAW_ANCHORS])))
    all_paths = paths.all_paths([b for b in backends if b in registered])
    net_specs = rows.network_rows(backends, registered)
    names = [*STARTUP_ROWS, *(s.name for s in net_specs), *PUBLISH_ROWS]
    chosen = [n for n in names if not args.only or any(fnmatch.fnmatchcase(n, g) for g in args.only)]
    if args.list:
        print("\n".join(names))
        return 0
    if not chosen:
        progress(f"no row matches {args.only}; rows: {', '.join(names)}")
        return 2
    if os.geteuid() != 0:
        progress("benchmarks/run.py: run as root (it builds a test world of network namespaces)")
        return 2
    net_specs = [s for s in net_specs if s.name in chosen]
    plan = plan_network(net_specs, all_paths)

    from world.harness import WorldRefused, open_world

    # A CI job is stopped with SIGTERM: unwind like Ctrl-C, so the world is torn down.
    signal.signal(signal.SIGTERM, _interrupt)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else HERE / "results" / stamp
    results: list[rows.Result] = []
    try:
        with open_world(REPO) as world:
            user: bool | str = True if args.user is None else (False if args.user == "root" else args.user)
            user_name = world.user.name if user is True else (args.user or "root")
            meta = {"timestamp": stamp, **machine_meta(), "reps": args.reps, "seconds": args.seconds,
                    "startup_runs": args.runs, "user": user_name, "registered_backends": sorted(registered),
                    "server": world.WORLD_V4}
            for name in STARTUP_ROWS:
                if name in chosen:
                    progress(f"{name}: {args.runs} runs each side")
                    results.append(STARTUP_ROWS[name](world, user, args.runs))
            measurements: measure.Measurements = {}
            if plan:
                runs = sum(len(ps) for _, ps in plan) * args.reps
                progress(f"network: {runs} client runs of {args.seconds:g} s "
                         f"({len(plan)} probes, {args.reps} repetitions)")
                with probes.servers(world, {p.server for p, _ in plan}, world.WORLD_V4) as endpoints:
                    measurements = measure.measure(world, user, plan, endpoints, args.reps, args.seconds, progress)
            results += [rows.evaluate(s, measurements, all_paths) for s in net_specs]
            for name in PUBLISH_ROWS:
                if name in chosen:
                    progress(f"{name}: {args.reps} repetitions of {args.seconds:g} s each side")
                    results.append(PUBLISH_ROWS[name](world, user, args.reps, args.seconds))
    except WorldRefused as refusal:
        progress(f"benchmarks/run.py: {refusal}")
        return 3

    text = report.table(results)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "results.json", meta, results, measurements)
    report.write_markdown(out / "results.md", meta, results)
    if args.json:
        report.write_json(Path(args.json), meta, results, measurements)
    try:
        report.write_chart(out / "chart.png", meta, measurements)
    except ImportError:
        progress("no chart: matplotlib is missing (pip install '.[bench]')")
    progress(f"written: {out}/results.md, results.json, chart.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
