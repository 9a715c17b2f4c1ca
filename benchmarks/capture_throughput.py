"""TCP throughput with and without `-c`: does capturing slow the command down?

    sudo /opt/netwrap-venv/bin/python benchmarks/capture_throughput.py [--seconds S] [--reps N]
        [--backends B,...] [--dir DIR] [--user NAME]

Inside a test world of its own (tests/world), like benchmarks/run.py: an
iperf3 server on the world address in the internet namespace, the client
`netwrap --backend B [-c FILE --summary] -- iperf3 -c WORLD ...` in the
host namespace as the world's test user (the rootless path), one stream,
upload (-c: the command sends; the child view carries 64 KiB segments one
way and ACKs the other) and download (-R). Each repetition runs the plain and
the capturing client alternately. Reported, never asserted: the receiver's
Gbit/s (median), the packets the capture stored, and every drop it counted
(queue, ring, write), from --summary.

The target is >= 1 Gbit/s with no drop over tunrelay's fast path: every
shipped backend is measured, tunrelay once per TCP path (`tunrelay:tproxy`,
the fast path, whose TCP the capture reads on the sandbox's lo, and
`tunrelay:nat`); --backends takes NAME or NAME:TUNRELAY_TCP_PATH.

Capture files go to --dir (default: a temporary directory on the same disk as
/tmp), and are removed after each run: only their sizes are kept.

Measured on the dev VM (2 vCPUs, kernel 6.18, 4 s runs, 2 repetitions, other
test runs sharing the machine), Gbit/s plain -> with -c, drops:
  paced 1G, up and down   pasta, slirp4netns, tunrelay tproxy (fast path, TCP
                          over lo) and nat: 1.00 -> 1.00, 0 dropped, ~500 MB
                          per 4 s file
  unpaced, download       pasta 8.6 -> 5.5, slirp4netns 6.9 -> 5.0,
                          tunrelay tproxy 14.7 -> 9.5 (nat 4.7 -> 3.7); the
                          writer falls behind at these rates: 20-40 % of
                          packets dropped and counted
  unpaced, upload         slirp4netns 4.1 -> 1.8, tunrelay 15.2 -> 11.6
                          (pasta's own upload is erratic here: 0.1-0.4 plain)
The command is never blocked: what costs throughput unpaced is CPU shared
with the reader and writer threads (2 vCPUs), not back-pressure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for entry in (HERE, REPO / "tests"):
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from nwbench.parse import ParseError, iperf3_json  # noqa: E402
from world.addresses import WORLD_V4  # noqa: E402
from world.harness import World, open_world  # noqa: E402

IPERF_PORT = 5201
SUMMARY = re.compile(r"netwrap: capture:\s+(\S+) (\S+): (\d+) packets captured, (\d+) dropped")


def start_server(world: World) -> subprocess.Popen:
    server = world.popen(["iperf3", "--server", "--bind", WORLD_V4, "--port", str(IPERF_PORT)], ns="inet",
                         user=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # ready when it listens (polling /proc: no event to wait on)
        probe = world.run(["sh", "-c", f"ss -Htln 'sport = :{IPERF_PORT}'"], ns="inet", user=False)
        if probe.stdout.strip():
            return server
        time.sleep(0.05)
    server.kill()
    raise SystemExit("iperf3 server did not start")


def one_run(world: World, backend: str, user: str | bool, seconds: float, reverse: bool,
            capture: Path | None, bitrate: str) -> dict:
    client = ["iperf3", "--client", WORLD_V4, "--port", str(IPERF_PORT), "--time", f"{seconds:g}", "--json",
              "--connect-timeout", "5000"] + (["--reverse"] if reverse else [])
    if bitrate != "max":
        client += ["--bitrate", bitrate]
    name, _, tcp_path = backend.partition(":")
    args = ["--backend", name] + (["--tunrelay-tcp", tcp_path] if tcp_path else [])
    args += (["--summary", "-c", str(capture)] if capture else []) + ["--", *client]
    done = world.netwrap(*args, user=user, timeout=seconds + 60)
    row: dict = {"status": done.returncode}
    try:
        row["gbit_s"] = iperf3_json(done.stdout).gbit_per_second
    except ParseError as exc:
        row["error"] = str(exc)
        row["stderr"] = done.stderr[-2000:]
        return row
    if capture is not None:
        match = SUMMARY.search(done.stderr)
        row["captured"] = int(match.group(3)) if match else None
        row["dropped"] = int(match.group(4)) if match else None
        row["file_mb"] = capture.stat().st_size / 1e6 if capture.exists() else None
        row["warnings"] = [l for l in done.stderr.splitlines() if "warning" in l]
        capture.unlink(missing_ok=True)
    return row


def main() -> int:
    from netwrap.backends import BUILTIN

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--reps", type=int, default=3)
    default = [b for name in BUILTIN for b in ([f"{name}:tproxy", f"{name}:nat"] if name == "tunrelay" else [name])]
    ap.add_argument("--backends", default=",".join(default))
    ap.add_argument("--dir", default=None, help="where capture files are written (default: a temp dir)")
    ap.add_argument("--user", default=None, help="run as this user (default: the world's test user)")
    ap.add_argument("--json", default=None, help="also write the raw rows here")
    ap.add_argument("--bitrates", default="1G,max",
                    help="iperf3 pacing per row, comma-separated: 1G is the target (no drop), max is all it can")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (the test world builds namespaces)")
    rows: list[dict] = []
    with open_world(REPO) as world:
        server = start_server(world)
        # Capture files of a default run are only measured, never kept (they run to GBs).
        base = Path(opts.dir or tempfile.mkdtemp(prefix="netwrap-capbench-"))
        base.mkdir(parents=True, exist_ok=True)
        os.chown(base, world.user.uid, world.user.gid)
        user: str | bool = opts.user or True
        try:
            for rep in range(opts.reps):
                for backend in opts.backends.split(","):
                    for bitrate in opts.bitrates.split(","):
                        for reverse in (False, True):
                            for capturing in (False, True):
                                name = f"{backend.replace(':', '-')}-{rep}-{int(reverse)}.pcapng"
                                target = base / name if capturing else None
                                row = one_run(world, backend, user, opts.seconds, reverse, target, bitrate)
                                row.update(backend=backend, rep=rep, direction="down" if reverse else "up",
                                           capture=capturing, bitrate=bitrate)
                                rows.append(row)
                                print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            server.kill()
            if opts.dir is None:
                shutil.rmtree(base, ignore_errors=True)
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=1))
    print(report(rows, opts.seconds))
    return 0


def report(rows: list[dict], seconds: float) -> str:
    out = [f"TCP throughput, one stream, {seconds:g} s per run, median of repetitions (Gbit/s, receiver); "
           "dropped: total over the repetitions", "",
           "| backend | paced | direction | plain | with -c | ratio | packets stored | dropped | file MB |",
           "|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["backend"], r["bitrate"], r["direction"]) for r in rows})
    for backend, bitrate, direction in keys:
        def pick(capturing: bool) -> list[dict]:
            return [r for r in rows if (r["backend"], r["bitrate"], r["direction"], r["capture"])
                    == (backend, bitrate, direction, capturing) and "gbit_s" in r]

        plain = [r["gbit_s"] for r in pick(False)]
        capt = pick(True)
        p = statistics.median(plain) if plain else float("nan")
        c = statistics.median(r["gbit_s"] for r in capt) if capt else float("nan")
        stored = statistics.median(r["captured"] or 0 for r in capt) if capt else 0
        dropped = sum(r["dropped"] or 0 for r in capt)
        size = statistics.median(r["file_mb"] or 0 for r in capt) if capt else 0
        out.append(f"| {backend} | {bitrate} | {direction} | {p:.2f} | {c:.2f} | {c / p if p else float('nan'):.2f} "
                   f"| {stored:.0f} | {dropped} | {size:.0f} |")
    failed = [r for r in rows if "error" in r]
    if failed:
        out += ["", f"{len(failed)} run(s) failed, e.g.: {failed[0]['error']}"]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
