"""Make ``netwrap.backends.tunrelay`` importable when the project is not
installed (running pytest from a checkout): pyproject maps the package
``netwrap.backends`` to the folder ``backends/``, which a bare checkout on
sys.path does not do.  An installed (or editable) netwrap is used as is."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

_REPO = Path(__file__).resolve().parents[4]


def _ensure_backends() -> None:
    try:
        import netwrap.backends  # noqa: F401
        return
    except ImportError:
        pass
    if str(_REPO) not in sys.path:
        sys.path.insert(0, str(_REPO))
    import netwrap

    pkg_dir = _REPO / "backends"
    init = pkg_dir / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(
            "netwrap.backends", init, submodule_search_locations=[str(pkg_dir)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["netwrap.backends"] = mod
        spec.loader.exec_module(mod)
    else:
        mod = types.ModuleType("netwrap.backends")
        mod.__path__ = [str(pkg_dir)]
        sys.modules["netwrap.backends"] = mod
    netwrap.backends = mod


_ensure_backends()
