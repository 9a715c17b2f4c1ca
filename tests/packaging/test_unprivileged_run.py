"""What a packager sees running the suite without root: the end-to-end tests as one skip
with one reason. Run as uid 65534 when these tests run as root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from privileges import REAL_ROOT

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def run_unprivileged(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    drop = _as_nobody if REAL_ROOT else None
    if drop is not None:
        os.chmod(tmp_path, 0o777)
        probe = subprocess.run([sys.executable, "-c", "import netwrap, pytest"], cwd=ROOT, env=env,
                               preexec_fn=drop, capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"uid {NOBODY} cannot use this checkout or interpreter: {probe.stderr.strip()[-200:]}")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
                          cwd=ROOT, env=env, preexec_fn=drop, capture_output=True, text=True, timeout=300)


def test_without_root_the_e2e_tests_are_one_skip_with_one_reason(tmp_path: Path) -> None:
    if os.geteuid() == 0 and not REAL_ROOT:
        pytest.skip("root of a user namespace cannot switch to another user")
    done = run_unprivileged(["tests/e2e"], tmp_path)
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, done.stdout[-3000:]
    assert "end-to-end tests need real root" in skipped[0]
    assert done.stdout.rstrip().splitlines()[-1].startswith("1 skipped")
    assert "Traceback" not in done.stdout + done.stderr
