"""Fixtures shared by every test: the test world and the rootless/rootful axis.

The world (see tests/world/__init__.py) is built once per session, only when
a test asks for it, and needs root; without root those tests are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# `world` is imported as a top-level package whatever pytest's import mode.
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from world.harness import World, WorldRefused, open_world  # noqa: E402

# Property tests judge behaviour, not speed: Hypothesis' default 200 ms
# deadline per example would fail them on a loaded CI machine.
from hypothesis import settings  # noqa: E402

settings.register_profile("netwrap", deadline=None)
settings.load_profile("netwrap")

EXIT_WORLD_REFUSED = 3


def _installed_elsewhere() -> str | None:
    """Where netwrap (or its backends) would be imported from, if not this checkout.

    CI installs the checkout it tests (pip install -e) into the shared venv; a
    later run from another checkout would then quietly test that other code,
    or a mix: `python -m pytest` finds netwrap/ in the current directory, but
    netwrap.backends only through the install's package-dir mapping.
    """
    for name in ("netwrap", "netwrap.backends"):
        try:
            spec = importlib.util.find_spec(name)
        except Exception:  # a broken package is for the tests to report
            return None
        if spec is None and name == "netwrap.backends" and (REPO_ROOT / "backends").is_dir():
            return "nowhere (netwrap.backends is not installed from this checkout)"
        origin = Path(spec.origin).resolve() if spec and spec.origin else None
        if origin is not None and REPO_ROOT not in origin.parents:
            return str(origin)
    return None


def pytest_configure(config: pytest.Config) -> None:
    elsewhere = _installed_elsewhere()
    if elsewhere and os.environ.get("NETWRAP_TEST_INSTALLED") != "1":
        pytest.exit(f"netwrap would be imported from {elsewhere}, not from this checkout ({REPO_ROOT}); "
                    "run `bash tests/setup.sh` here first (or set NETWRAP_TEST_INSTALLED=1 to test "
                    "an installed netwrap on purpose)", returncode=4)


def pytest_sessionstart(session: pytest.Session) -> None:
    # CI stops a job with SIGTERM; turn it into what Ctrl-C does, so session
    # teardown still removes the world's namespaces, daemons and temp dirs.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    if os.geteuid() != 0:
        pytest.skip("the test world needs root")
    try:
        with open_world(REPO_ROOT) as built:
            yield built
    except WorldRefused as refusal:
        pytest.exit(str(refusal), returncode=EXIT_WORLD_REFUSED)


@pytest.fixture(params=[True, False], ids=["rootless", "rootful"])
def as_user(request: pytest.FixtureRequest, world: World) -> bool:
    """True: run netwrap as the unprivileged test user; False: as root."""
    return request.param
