"""Wall time of commands, run alternately; executed inside the test world.

    python -c "$(cat timer.py)" '[[argv...], [argv...]]' RUNS

stdlib only: it is handed to the world's interpreter as source (`-c`), so it
runs as the benchmark user without reading the checkout, and the world's
launcher (a setns + exec, tens of ms) is outside the timed span.
Prints {"samples": [[seconds...], ...]} per argv, or {"error": "..."}.
"""

import json
import subprocess
import sys
import time


def once(argv: list) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode()[-300:]}")
    return elapsed


def main() -> None:
    argvs, runs = json.loads(sys.argv[1]), int(sys.argv[2])
    samples: list = [[] for _ in argvs]
    try:
        for argv in argvs:  # warm caches (netwrap's probe cache, the page cache)
            once(argv)
        for _ in range(runs):  # alternate, so drift hits all alike
            for i, argv in enumerate(argvs):
                samples[i].append(once(argv))
    except RuntimeError as exc:
        print(json.dumps({"error": str(exc)}))
        return
    print(json.dumps({"samples": samples}))


if __name__ == "__main__":
    main()
