"""Private scratch directories, and the sweep of those a killed netwrap left."""

from __future__ import annotations

import os

from netwrap.linux import scratch


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_sweep_removes_only_our_dirs_whose_netwrap_is_gone(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f"netwrap-pasta-{dead}-0a1b2c3d"
    stale.mkdir()
    (stale / "pid").write_text("")
    alive = tmp_path / f"netwrap-setup-{os.getpid()}-0a1b2c3d"
    alive.mkdir()
    unrelated = tmp_path / f"other-pasta-{dead}-0a1b2c3d"
    unrelated.mkdir()
    scratch.sweep_stale(str(tmp_path))
    assert not stale.exists()
    assert alive.exists() and unrelated.exists()


def test_make_private_dir_is_fresh_private_and_removable(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = scratch.make_private_dir("unit")
    assert os.path.dirname(path) == str(tmp_path)
    assert os.stat(path).st_mode & 0o777 == 0o700
    assert f"-{os.getpid()}-" in os.path.basename(path)
    open(os.path.join(path, "f"), "w").close()
    scratch.remove_private_dir(path)
    assert not os.path.exists(path)
