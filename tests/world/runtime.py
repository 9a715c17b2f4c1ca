"""A copy of the working tree's netwrap that the test user can read.

The repository may live where the test user cannot look (under /root), so the
world copies `netwrap/` to `<rt>/netwrap/` and `backends/` to
`<rt>/netwrap/backends/` (what pyproject's package-dir mapping does), with
dirs 0755 and files 0644, and every run gets PYTHONPATH=<rt>.  Root runs use
the same copy, so both kinds of run test the same code.

The copy is byte-compiled as pip compiles an installed package: the test user
cannot write __pycache__ there, and without it every run would compile each
module again (tens of milliseconds a run, which the startup benchmark would
charge to netwrap).
"""

from __future__ import annotations

import compileall
import os
import shutil
from pathlib import Path

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


def copy_runtime(repo: Path, rt: Path) -> Path:
    rt.mkdir(mode=0o755, parents=True, exist_ok=True)
    package = rt / "netwrap"
    shutil.copytree(repo / "netwrap", package, ignore=_IGNORE, dirs_exist_ok=True)
    if (repo / "backends").is_dir():
        shutil.copytree(repo / "backends", package / "backends", ignore=_IGNORE, dirs_exist_ok=True)
    if not compileall.compile_dir(str(package), quiet=1):
        raise RuntimeError(f"cannot byte-compile the runtime copy in {package}")
    for root, dirs, files in os.walk(rt):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    return rt
