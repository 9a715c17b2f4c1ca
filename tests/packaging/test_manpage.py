"""netwrap(1) (docs/netwrap.1): complete against --help, right version, renders cleanly."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from netwrap.cli.options import build_parser

PAGE = Path(__file__).resolve().parents[2] / "docs" / "netwrap.1"
NETWRAP_SOURCES = [Path(__file__).resolve().parents[2] / d for d in ("netwrap", "backends")]


def page_text() -> str:
    """The page's source with troff's escaped hyphens as plain ones and font changes left out."""
    return re.sub(r"\\f[BIRP]", "", PAGE.read_text().replace("\\-", "-"))


def sections() -> dict[str, str]:
    found: dict[str, str] = {}
    name = None
    for line in page_text().splitlines():
        if line.startswith(".SH "):
            name = line[4:].strip().strip('"')
            found[name] = ""
        elif name is not None:
            found[name] += line + "\n"
    return found


def test_every_option_of_help_is_documented() -> None:
    text = page_text()
    options = [s for action in build_parser()._actions for s in action.option_strings]
    assert "--backend" in options and "-C" in options  # the list itself is the parser's
    missing = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)]
    assert missing == []


def test_every_option_has_its_own_entry() -> None:
    # Each long option starts a tagged paragraph (.TP then a line naming it).
    lines = page_text().splitlines()
    tagged = " ".join(lines[i + 1] for i, line in enumerate(lines[:-1]) if line == ".TP")
    options = [s for action in build_parser()._actions for s in action.option_strings if s.startswith("--")]
    assert [o for o in options if o not in tagged] == []


def test_subcommands_and_required_sections_are_there() -> None:
    found = sections()
    for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SUBCOMMANDS", "EXIT STATUS", "ENVIRONMENT",
                 "FILES", "EXAMPLES", "SECURITY", "SEE ALSO"):
        assert name in found, name
    assert "netwrap backends" in found["SUBCOMMANDS"] and "netwrap doctor" in found["SUBCOMMANDS"]
    assert "--names" in found["SUBCOMMANDS"]
    assert "--as-root" in found["SECURITY"]


def test_exit_statuses_are_the_documented_ones() -> None:
    # README and --help's epilog: 2 usage, 125 netwrap failed, 126 not executable, 127 not found.
    text = sections()["EXIT STATUS"]
    for status in ("2", "125", "126", "127"):
        assert re.search(rf"^\.B {status}$", text, re.M), status
    assert "128+" in text


def test_every_netwrap_environment_variable_is_documented() -> None:
    used = set()
    for top in NETWRAP_SOURCES:
        for path in top.rglob("*.py"):
            used |= set(re.findall(r"\bNETWRAP_[A-Z0-9_]+", path.read_text()))
    environment = sections()["ENVIRONMENT"]
    assert sorted(v for v in used if v not in environment) == []
    # And the ones netwrap reads today, by name.
    for name in ("PATH", "SUDO_UID", "SUDO_GID", "XDG_RUNTIME_DIR", "TMPDIR", "XDG_CACHE_HOME"):
        assert name in environment


def test_renders_without_warnings() -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed (Debian: groff-base)")
    done = subprocess.run([groff, "-man", "-ww", "-z", str(PAGE)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")


def test_a_warning_would_be_seen(tmp_path: Path) -> None:
    # The check above can fail: a page with an unknown request makes groff -ww speak.
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed (Debian: groff-base)")
    bad = tmp_path / "bad.1"
    bad.write_text(PAGE.read_text() + ".NOSUCHMACRO x\n")
    done = subprocess.run([groff, "-man", "-ww", "-z", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.stderr != ""
