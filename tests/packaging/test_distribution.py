"""The sdist holds every file of the repository and builds offline; the wheel installs the
man page and completions under share/.

Built from a copy of the tracked files (the checkout may not be writable, and
must not gain build/ or egg-info), without build isolation and without an
index, as a distribution's build does.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
# Where the wheel puts them, relative to the installation prefix.
DATA_FILES = {
    "share/man/man1/netwrap.1": "docs/netwrap.1",
    "share/bash-completion/completions/netwrap": "completions/bash/netwrap",
    "share/zsh/site-functions/_netwrap": "completions/zsh/_netwrap",
    "share/fish/vendor_completions.d/netwrap.fish": "completions/fish/netwrap.fish",
}


def tracked_files() -> list[str]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("the sdist is checked against `git ls-files`: not a git checkout")
    done = subprocess.run([git, "-c", f"safe.directory={ROOT}", "-C", str(ROOT), "ls-files", "-z"],
                          capture_output=True, timeout=60)
    if done.returncode != 0:
        pytest.skip(f"git ls-files failed: {done.stderr.decode(errors='replace').strip()}")
    # Files deleted in the work tree but not yet committed are not the sdist's business.
    return sorted(p for p in done.stdout.decode().split("\0") if p and (ROOT / p).exists())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path, Path]:
    for module in ("build", "setuptools", "wheel"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"building needs the '{module}' package (the test extra)")
    files = tracked_files()
    tree = tmp_path_factory.mktemp("tree")
    for name in files:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tree / name)
    dist = tree / "dist"
    done = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(tree)],
                          capture_output=True, text=True, env=OFFLINE, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = dist.glob("netwrap-*.tar.gz")
    (wheel,) = dist.glob("netwrap-*.whl")
    return files, sdist, wheel


def test_the_sdist_holds_every_tracked_file(built: tuple[list[str], Path, Path]) -> None:
    files, sdist, _ = built
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        members = {n.partition("/")[2] for n in tar.getnames()}
    assert top.startswith("netwrap-")
    assert [f for f in files if f not in members] == []
    # Those the issue names, by name: the suite, the test world, docs, the man page, benchmarks.
    for name in ("LICENSE", "CHANGELOG.md", "tests/run", "tests/setup.sh", "tests/world/harness.py",
                 "tests/e2e/conftest.py", "docs/packaging.md", "docs/netwrap.1", "benchmarks/run.py",
                 "completions/bash/netwrap", "pyproject.toml", "MANIFEST.in"):
        assert name in members, name
    assert not [m for m in members if "__pycache__" in m or m.endswith(".pyc")]


def test_the_wheel_installs_man_page_and_completions(built: tuple[list[str], Path, Path]) -> None:
    _, _, wheel = built
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        (data,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".data")}
        for installed, source in DATA_FILES.items():
            assert whl.read(f"{data}/data/{installed}") == (ROOT / source).read_bytes(), installed
        assert any(n.endswith(".dist-info/LICENSE") for n in names)
        assert "netwrap/backends/pasta.py" in names  # the package-dir mapping


def test_the_sdist_builds_a_wheel_offline(built: tuple[list[str], Path, Path], tmp_path: Path) -> None:
    _, sdist, _ = built
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path)
    (unpacked,) = tmp_path.glob("netwrap-*")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                           "--wheel-dir", str(tmp_path / "wheels"), str(unpacked)],
                          capture_output=True, text=True, env=OFFLINE, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [p.name for p in (tmp_path / "wheels").iterdir()] == [f"{unpacked.name}-py3-none-any.whl"]
