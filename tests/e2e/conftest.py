"""End-to-end fixtures: the backend axis of the conformance suite."""

from __future__ import annotations

import uuid

import pytest

from netwrap.backends import BUILTIN


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
