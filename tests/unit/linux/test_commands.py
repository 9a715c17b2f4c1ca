"""Where helper programs are looked up (netwrap.linux.commands), and the PATH they get."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from netwrap.cli import options
from netwrap.errors import UsageError
from netwrap.linux import commands
from privileges import needs_real_root_if_root
from privileges import REAL_ROOT, SYSTEM_DIRS_REASON, SYSTEM_DIRS_ROOTS, needs_roots_system_dirs

needs_root = pytest.mark.skipif(not REAL_ROOT, reason="root-owned directories need real root")


@pytest.fixture(autouse=True)
def _default_rule(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(commands, "_helper_path", None)
    monkeypatch.setattr(commands, "_started_as_root", False)


def _program(directory: Path, name: str, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    directory.mkdir(mode=0o755, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_rootless_uses_the_callers_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = _program(tmp_path / "mine", "nft")
    monkeypatch.setenv("PATH", f"{mine.parent}:/usr/sbin:/usr/bin")
    assert commands.which("nft") == str(mine)
    assert commands.helper_env() is None  # helpers inherit the caller's environment
    assert commands.searched() == "PATH"


@needs_root
def test_as_root_a_fake_nft_first_in_path_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _program(tmp_path / "caller", "nft")
    system = _program(tmp_path / "system", "nft")
    monkeypatch.setenv("PATH", f"{fake.parent}:{system.parent}")
    monkeypatch.setattr(commands, "_started_as_root", True)
    monkeypatch.setattr(commands, "SYSTEM_PATH", (str(tmp_path / "nonesuch"), str(system.parent)))
    assert commands.which("nft") == str(system)
    assert commands.searched() == "the system PATH"
    # A system directory someone else may write to is skipped, not used.
    system.parent.chmod(0o775)
    assert commands.which("nft") is None


def test_as_root_the_explicit_helper_path_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = _program(tmp_path / "chosen", "nft")
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin")
    monkeypatch.setattr(commands, "_started_as_root", True)
    commands.configure_helper_path([str(chosen.parent)])
    assert commands.which("nft") == str(chosen)
    assert commands.which("ip") is None  # only those directories, not the system's too
    assert commands.searched() == "--helper-path"


def test_helper_run_as_root_gets_the_helper_path_as_its_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sh").symlink_to("/bin/sh")
    monkeypatch.setenv("PATH", f"{tmp_path}/caller:/usr/bin:/bin")
    monkeypatch.setattr(commands, "_started_as_root", True)
    commands.configure_helper_path([str(bindir)])
    done = commands.run(["sh", "-c", 'echo "$PATH"'])
    assert done.stdout == f"{bindir}\n"
    assert done.argv == ["sh", "-c", 'echo "$PATH"']


def test_spawned_helper_as_root_gets_the_helper_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sh").symlink_to("/bin/sh")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(commands, "_started_as_root", True)
    commands.configure_helper_path([str(bindir)])
    r, w = os.pipe()
    try:
        pid = commands.spawn_helper(["sh", "-c", 'echo "$PATH"'], output_fd=w)
        os.close(w)
        w = -1
        out = b""
        while chunk := os.read(r, 4096):
            out += chunk
        os.waitpid(pid, 0)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert out == f"{bindir}\n".encode()


def test_a_program_missing_from_the_helper_path_is_a_command_error(tmp_path: Path) -> None:
    commands.configure_helper_path([str(tmp_path)])
    with pytest.raises(commands.CommandError, match="nft: not found in --helper-path"):
        commands.run(["nft", "--version"])


# -- --helper-path's checks ------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("bin", "'bin' is not an absolute path"),
    ("/usr/bin:", "'' is not an absolute path"),
    ("/usr/bin::/bin", "'' is not an absolute path"),
    ("/nonexistent/netwrap-bin", "/nonexistent/netwrap-bin is not a directory"),
], ids=["relative", "trailing-empty", "empty-entry", "missing"])
@pytest.mark.parametrize("as_root", [False, True], ids=["rootless", "root"])
def test_helper_path_refused(text: str, message: str, as_root: bool) -> None:
    if as_root and not SYSTEM_DIRS_ROOTS:
        pytest.skip(SYSTEM_DIRS_REASON)
    with pytest.raises(UsageError, match=message) as info:
        commands.parse_helper_path(text, as_root=as_root)
    assert "\n" not in str(info.value)


@needs_roots_system_dirs
def test_helper_path_accepts_absolute_directories() -> None:
    assert commands.parse_helper_path("/usr/sbin:/usr/bin", as_root=True) == ("/usr/sbin", "/usr/bin")


@needs_root
@pytest.mark.parametrize("mode, owner, message", [
    (0o775, 0, "is writable by its group or others (mode 775)"),
    (0o757, 0, "is writable by its group or others (mode 757)"),
    (0o1777, 0, "is writable by its group or others (mode 1777)"),
    (0o755, 65534, "is owned by uid 65534, not root"),
], ids=["group-writable", "other-writable", "sticky-itself", "not-roots"])
def test_helper_path_as_root_refuses_a_directory_others_control(tmp_path: Path, mode: int, owner: int,
                                                                message: str) -> None:
    d = tmp_path / "bin"
    d.mkdir()
    os.chmod(d, mode)
    os.chown(d, owner, -1)
    with pytest.raises(UsageError, match=re.escape(f"netwrap runs as root and {d} {message}")):
        commands.parse_helper_path(str(d), as_root=True)
    assert commands.parse_helper_path(str(d), as_root=False) == (str(d),)  # rootless: the caller's business


@needs_root
def test_helper_path_as_root_checks_the_directories_above(tmp_path: Path) -> None:
    above = tmp_path / "above"
    (above / "bin").mkdir(parents=True)
    os.chmod(above / "bin", 0o755)
    os.chmod(above, 0o777)  # anyone could rename bin away and put their own there
    with pytest.raises(UsageError, match=f"{above} is writable by its group or others"):
        commands.parse_helper_path(str(above / "bin"), as_root=True)
    os.chmod(above, 0o1777)  # sticky, like /tmp: only root may rename root's entries
    assert commands.parse_helper_path(str(above / "bin"), as_root=True) == (str(above / "bin"),)
    # Through a symlink, the real directory's chain counts too.
    elsewhere = tmp_path / "open"
    elsewhere.mkdir()
    os.chmod(elsewhere, 0o777)
    (elsewhere / "bin").mkdir(mode=0o755)
    link = tmp_path / "link"
    link.symlink_to(elsewhere / "bin")
    with pytest.raises(UsageError, match=f"{elsewhere} is writable"):
        commands.parse_helper_path(str(link), as_root=True)


def test_help_names_the_system_path_netwrap_uses() -> None:
    assert options.SYSTEM_PATH_TEXT == ":".join(commands.SYSTEM_PATH)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts and mount namespaces need root (CI runs as root)")
@needs_real_root_if_root
def test_a_helper_as_root_cannot_unmount_the_hosts_mounts(tmp_path):
    # The shape of iproute2's /run/netns: a shared mount with a mount under it
    # (there, one per named netns). slirp4netns --enable-sandbox unmounts
    # what it does not need in its own mount namespace; run by root in the
    # host's, that unmount propagated and wiped every named netns.
    shared, inner = tmp_path / "shared", tmp_path / "shared" / "inner"
    shared.mkdir()
    subprocess.run(["mount", "--bind", str(shared), str(shared)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(shared)], check=True)
        inner.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "netwrap-test", str(inner)], check=True)
        r, w = os.pipe()
        try:
            pid = commands.spawn_helper(["umount", "-l", str(inner)], output_fd=w)
        finally:
            os.close(w)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, os.read(r, 4096)
        os.close(r)
        assert os.path.ismount(inner)  # unmounted in the helper's namespace only
    finally:
        subprocess.run(["umount", "-R", "-l", str(shared)], check=False)
