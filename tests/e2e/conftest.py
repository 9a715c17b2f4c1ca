"""End-to-end fixtures: the backend axis of the conformance suite."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from netwrap.backends import BUILTIN
from privileges import REAL_ROOT

# Every test here runs netwrap in the test world, which only real root can
# build (network namespaces, veths, a test user). Without it the directory is
# reported as one skip with one reason, instead of one line per test: its
# test files are left out and this conftest.py stands for them. A test file
# named on the command line is still collected (and skips test by test).
NOT_RUN_REASON = ("end-to-end tests need real root to build their test world of network namespaces; "
                  "see docs/packaging.md")
E2E_DIR = Path(__file__).resolve().parent


class _NotRun(pytest.File):
    def collect(self):
        pytest.skip(NOT_RUN_REASON)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not REAL_ROOT and collection_path.parent == E2E_DIR and collection_path.name != "conftest.py":
        return True
    return None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if not REAL_ROOT and file_path == E2E_DIR / "conftest.py":
        return _NotRun.from_parent(parent, path=file_path)
    return None


class BackendVariant(str):
    """A backend under test.  The string is the backend's name (what netwrap
    reports: summaries, `netwrap backends`); ``argv`` selects it, with the
    flags of this variant (tunrelay runs once per TCP path)."""

    name: str
    args: tuple[str, ...]
    id: str

    def __new__(cls, name: str, *args: str, id: str | None = None) -> "BackendVariant":
        obj = super().__new__(cls, name)
        obj.name = name
        obj.args = args
        obj.id = id or name
        return obj

    @property
    def argv(self) -> list[str]:
        return ["--backend", self.name, *self.args]


# Extra variants of a backend, by name; a backend not listed runs once.
VARIANTS = {
    "tunrelay": [BackendVariant("tunrelay", "--tunrelay-tcp", "tproxy", id="tunrelay-tproxy"),
                 BackendVariant("tunrelay", "--tunrelay-tcp", "nat", id="tunrelay-nat")],
}

# Every backend netwrap ships runs the same conformance tests; CI installs
# them all, so none is skipped there.
BACKENDS = [v for name in BUILTIN for v in VARIANTS.get(name, [BackendVariant(name)])]


@pytest.fixture(params=BACKENDS, ids=[b.id for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> BackendVariant:
    return request.param


@pytest.fixture
def tag() -> str:
    """A value to pass as NETWRAP_TEST_TAG, to find this run's processes later."""
    return uuid.uuid4().hex
