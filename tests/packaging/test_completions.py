"""Shell completions (completions/): bash's run in a real bash; zsh's and fish's parsed
by their shells, and fish's run too. Backend names come from the registry."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netwrap.cli.options import build_parser

ROOT = Path(__file__).resolve().parents[2]
BASH = ROOT / "completions" / "bash" / "netwrap"
ZSH = ROOT / "completions" / "zsh" / "_netwrap"
FISH = ROOT / "completions" / "fish" / "netwrap.fish"
# The netwrap the completions call for backend names: this interpreter's.
BIN_DIR = str(Path(sys.executable).parent)
LONG_OPTIONS = [s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")]


def registered_backends() -> set[str]:
    """Every name in the entry-point group, read from the installed metadata (plugins too)."""
    return {ep.name for ep in importlib.metadata.entry_points(group="netwrap.backends")}


def shell_env() -> dict[str, str]:
    return {**os.environ, "PATH": BIN_DIR + os.pathsep + os.environ.get("PATH", "")}


def bash_complete(*words: str) -> list[str]:
    """COMPREPLY for the command line `words`, the last word being completed."""
    assert (ROOT / "netwrap").is_dir()
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    script = (f"source '{BASH}'; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
              'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}; _netwrap; printf "%s\\n" "${COMPREPLY[@]}"')
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                          env=shell_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_netwrap_backends_names_lists_the_registry() -> None:
    done = subprocess.run([sys.executable, "-m", "netwrap", "backends", "--names"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    names = done.stdout.splitlines()
    assert names[:4] == ["auto", "pasta", "slirp4netns", "tunrelay"]
    assert set(names) == {"auto"} | registered_backends()


def test_bash_offers_backend_for_bac() -> None:
    assert bash_complete("netwrap", "--bac") == ["--backend"]


def test_bash_offers_the_backend_names_after_backend() -> None:
    offered = bash_complete("netwrap", "--backend", "")
    assert {"auto", "pasta", "slirp4netns", "tunrelay"} <= set(offered)
    assert set(offered) == {"auto"} | registered_backends()  # plugins appear
    assert bash_complete("netwrap", "--backend", "sl") == ["slirp4netns"]
    # --backend=NAME: bash splits it at "=".
    assert bash_complete("netwrap", "--backend", "=", "tun") == ["tunrelay"]


def test_bash_offers_every_long_option() -> None:
    assert sorted(o for o in bash_complete("netwrap", "--") if o.startswith("--")) == sorted(LONG_OPTIONS)


def test_bash_offers_capture_points_and_files(tmp_path: Path) -> None:
    assert sorted(bash_complete("netwrap", "-C", "")) == ["both", "child", "egress", "wire-egress"]
    assert bash_complete("netwrap", "--capture-point", "w") == ["wire-egress"]
    (tmp_path / "run.pcapng").write_bytes(b"")
    assert bash_complete("netwrap", "-c", str(tmp_path / "run.")) == [str(tmp_path / "run.pcapng")]
    assert bash_complete("netwrap", "--flow-log", str(tmp_path / "r")) == [str(tmp_path / "run.pcapng")]


def test_bash_offers_subcommands_and_their_options() -> None:
    assert "backends" in bash_complete("netwrap", "back")
    assert bash_complete("netwrap", "backends", "--n") == ["--names"]
    assert bash_complete("netwrap", "doctor", "--") == ["--helper-path", "--help"]


def test_bash_completes_the_command_after_the_options() -> None:
    # After "--" or the first word that is no option, it is the command's line, not netwrap's.
    assert "bash" in bash_complete("netwrap", "--summary", "--", "bas")
    assert "bash" in bash_complete("netwrap", "--backend", "pasta", "bas")
    assert "--backend" not in bash_complete("netwrap", "--", "ls", "--bac")


def _shell(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def test_zsh_completion_parses_and_names_every_option() -> None:
    done = subprocess.run([_shell("zsh"), "-n", str(ZSH)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    text = ZSH.read_text()
    # An _arguments spec names an option followed by "[", "=" or, in a {-v,--verbose} pair, "}".
    assert [o for o in LONG_OPTIONS if not re.search(re.escape(o) + r"[\[=}]", text)] == []
    assert "backends --names" in text and "child egress wire-egress both" in text


def test_fish_completion_parses_and_names_every_option() -> None:
    done = subprocess.run([_shell("fish"), "-n", str(FISH)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    text = FISH.read_text()
    assert [o for o in LONG_OPTIONS if f"-l {o[2:]} " not in text] == []


def fish_complete(line: str) -> list[str]:
    done = subprocess.run([_shell("fish"), "--no-config", "-c", f"source '{FISH}'; complete -C '{line}'"],
                          capture_output=True, text=True, env=shell_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    return [row.split("\t")[0] for row in done.stdout.splitlines()]


def test_fish_offers_backend_and_the_backend_names() -> None:
    assert fish_complete("netwrap --bac") == ["--backend"]
    assert set(fish_complete("netwrap --backend ")) == {"auto"} | registered_backends()
    assert sorted(fish_complete("netwrap -C ")) == ["both", "child", "egress", "wire-egress"]
