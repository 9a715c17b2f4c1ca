"""One version: netwrap.__version__, as the distribution, --version, the man page, the
changelog and a capture's section header give it."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pcapng
import pytest

import netwrap
from netwrap.capture.pcapng_file import CaptureFile

ROOT = Path(__file__).resolve().parents[2]
VERSION = importlib.metadata.version("netwrap")  # what the installed distribution's metadata says


def test_the_distribution_takes_its_version_from_the_package() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)
    assert netwrap.__version__ == VERSION
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # Written once, in netwrap/__init__.py: pyproject only points there.
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "netwrap.__version__"}


def test_netwrap_version_prints_it() -> None:
    done = subprocess.run([sys.executable, "-m", "netwrap", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, f"netwrap {VERSION}\n")


def test_the_man_page_names_it() -> None:
    th = [line for line in (ROOT / "docs" / "netwrap.1").read_text().splitlines() if line.startswith(".TH ")]
    assert len(th) == 1
    assert f'"netwrap {VERSION}"' in th[0]


def test_the_changelog_has_a_section_for_it() -> None:
    headings = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    released = [h for h in headings if h != "Unreleased"]
    assert released[0] == VERSION  # the newest release is this one


def test_a_capture_names_it_in_its_section_header(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    with CaptureFile.open(path) as capture:
        capture.add_interface("tun0", 101, "child view")
    with open(path, "rb") as f:
        shb = next(iter(pcapng.FileScanner(f)))
    assert isinstance(shb, pcapng.blocks.SectionHeader)
    assert shb.options["shb_userappl"] == f"netwrap {VERSION}"
