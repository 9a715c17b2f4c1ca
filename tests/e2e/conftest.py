"""End-to-end fixtures: the backend axis of the conformance suite."""

from __future__ import annotations

import uuid

import pytest

from netwrap.backends import BUILTIN

# Every backend netwrap ships runs the same conformance tests; CI installs
# them all, so none is skipped there.
BACKENDS = list(BUILTIN)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tag() -> str:
    """A value to pass as NETWRAP_TEST_TAG, to find this run's processes later."""
    return uuid.uuid4().hex
