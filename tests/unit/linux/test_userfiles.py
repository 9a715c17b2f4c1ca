"""Files opened on a user's behalf, attacked as a second local user would.

Run as root: a directory owned by the unprivileged test user (no sticky bit,
so the kernel's protected_symlinks does not help) holds links, FIFOs,
devices and hard links pointing at root's files. Each check names what the
kernel says happened to root's file (its bytes), not only the error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from netwrap.cli import options
from netwrap.errors import UsageError
from netwrap.linux import userfiles
from privileges import REAL_ROOT
from world.testuser import TestUser, ensure_user

pytestmark = pytest.mark.skipif(not REAL_ROOT, reason="attacks need real root and a second user")

SECRET = b"root's secret\n"


class Place:
    def __init__(self, top: Path, user: TestUser) -> None:
        self.user = user
        self.identity = userfiles.Identity(uid=user.uid, gid=user.gid, groups=(user.gid,))
        self.home = top / "user"  # the user's own directory: no sticky bit
        self.home.mkdir()
        os.chown(self.home, user.uid, user.gid)
        self.home.chmod(0o755)
        self.vault = top / "root"
        self.vault.mkdir(mode=0o700)
        self.secret = self.vault / "secret"
        self.secret.write_bytes(SECRET)
        self.secret.chmod(0o600)

    def link(self, name: str, target: Path | str) -> Path:
        path = self.home / name
        os.symlink(target, path)
        os.lchown(path, self.user.uid, self.user.gid)
        return path

    def secret_intact(self) -> bool:
        return hashlib.sha256(self.secret.read_bytes()).digest() == hashlib.sha256(SECRET).digest()


@pytest.fixture
def place() -> Iterator[Place]:
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, the user could not get in.
    top = Path(tempfile.mkdtemp(prefix="nw-userfiles-", dir="/tmp"))
    top.chmod(0o755)
    try:
        yield Place(top, ensure_user())
    finally:
        shutil.rmtree(top)


def _refused(path: Path, identity: userfiles.Identity | None, reason: str) -> None:
    with pytest.raises(UsageError) as exc:
        userfiles.open_output(str(path), flag="-c", identity=identity)
    assert str(exc.value).startswith(f"-c '{path}': ")
    assert reason in str(exc.value)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("as_user", [True, False], ids=["for-user", "for-root"])
def test_symlink_to_roots_file_is_not_written(place: Place, as_user: bool) -> None:
    link = place.link("run.pcapng", place.secret)
    identity = place.identity if as_user else None
    _refused(link, identity, "symbolic link")
    assert place.secret_intact()


@pytest.mark.parametrize("as_user", [True, False], ids=["for-user", "for-root"])
def test_dangling_symlink_creates_nothing(place: Place, as_user: bool) -> None:
    target = place.vault / "does-not-exist"
    link = place.link("new.jsonl", target)
    _refused(link, place.identity if as_user else None, "symbolic link")
    assert not os.path.lexists(target)


def test_fifo_is_refused_without_blocking(place: Place) -> None:
    fifo = place.home / "fifo"
    os.mkfifo(fifo)
    _refused(fifo, place.identity, "not a regular file (a FIFO)")
    _refused(fifo, None, "not a regular file (a FIFO)")


def test_device_node_is_refused(place: Place) -> None:
    dev = place.home / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    _refused(dev, place.identity, "not a regular file (a character device)")
    _refused(dev, None, "not a regular file (a character device)")


@pytest.fixture
def hardlinks_unprotected() -> Iterator[None]:
    knob = Path("/proc/sys/fs/protected_hardlinks")
    before = knob.read_text()
    knob.write_text("0\n")
    try:
        yield
    finally:
        knob.write_text(before)


def test_hardlink_to_roots_file_is_refused(place: Place, hardlinks_unprotected: None) -> None:
    # With protected_hardlinks off the user may link to a root file they can reach but not write.
    target = place.home.parent / "root-file"
    target.write_bytes(SECRET)
    target.chmod(0o644)
    path = place.home / "flows.jsonl"
    pid = os.fork()
    if pid == 0:
        try:
            os.setgid(place.user.gid)
            os.setuid(place.user.uid)
            os.link(target, path)
            os._exit(0)
        except BaseException:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert os.stat(path).st_ino == target.stat().st_ino
    _refused(path, None, "has 2 hard links")
    _refused(path, place.identity, "has 2 hard links")
    assert target.read_bytes() == SECRET


def test_new_output_belongs_to_the_user_and_is_empty(place: Place) -> None:
    path = place.home / "run.pcapng"
    out = userfiles.open_output(str(path), flag="-c", identity=place.identity)
    try:
        assert out.created and out.path == str(path)
        st = os.fstat(out.fd)
        assert (st.st_uid, st.st_gid, st.st_size) == (place.user.uid, place.user.gid, 0)
        assert os.write(out.fd, b"ok") == 2
    finally:
        os.close(out.fd)
    assert path.read_bytes() == b"ok"


def test_existing_regular_file_is_taken_untruncated(place: Place) -> None:
    path = place.home / "old.pcapng"
    path.write_bytes(b"previous run")
    os.chown(path, place.user.uid, place.user.gid)
    out = userfiles.open_output(str(path), flag="-c", identity=place.identity)
    os.close(out.fd)
    assert not out.created
    assert path.read_bytes() == b"previous run"  # truncated by the writer once it holds the lock


def test_user_cannot_have_root_write_where_the_user_cannot(place: Place) -> None:
    _refused(place.vault / "new.pcapng", place.identity, "Permission denied")
    assert sorted(os.listdir(place.vault)) == ["secret"]


def test_symlinked_directory_of_another_user_is_not_followed_by_root(place: Place) -> None:
    # The directory could have been swapped for this link after any check; root refuses to go through it.
    link = place.link("sub", place.vault)
    _refused(link / "new.pcapng", None, "symbolic link 'sub'")
    assert sorted(os.listdir(place.vault)) == ["secret"]


def test_discard_removes_only_the_file_it_created(place: Place) -> None:
    made = userfiles.open_output(str(place.home / "a"), flag="-c", identity=place.identity)
    kept = place.home / "b"
    kept.write_bytes(b"keep")
    taken = userfiles.open_output(str(kept), flag="-c", identity=None)
    userfiles.discard([made, taken], identity=place.identity)
    assert sorted(os.listdir(place.home)) == ["b"] and kept.read_bytes() == b"keep"


def test_discard_leaves_a_file_put_in_the_created_ones_place(place: Place) -> None:
    made = userfiles.open_output(str(place.home / "a"), flag="-c", identity=None)
    os.unlink(place.home / "a")
    (place.home / "a").write_bytes(b"someone else's")
    userfiles.discard([made], identity=None)
    assert (place.home / "a").read_bytes() == b"someone else's"


def test_input_is_read_with_the_users_rights(place: Place) -> None:
    link = place.link("hosts", place.secret)
    with pytest.raises(UsageError, match=rf"^--hosts-file '{link}': Permission denied$"):
        userfiles.read_input(str(link), flag="--hosts-file", identity=place.identity)
    mine = place.home / "mine"
    mine.write_bytes(b"127.0.0.1 localhost\n")
    assert userfiles.read_input(str(mine), flag="--hosts-file", identity=place.identity) == b"127.0.0.1 localhost\n"


def test_root_does_not_follow_a_users_link_for_input(place: Place) -> None:
    link = place.link("hosts", place.secret)
    with pytest.raises(UsageError, match="symbolic link 'hosts' in a directory that users other than root"):
        userfiles.read_input(str(link), flag="--hosts-file", identity=None)
    # A link root's own directory holds is followed.
    trusted = place.vault / "alias"
    os.symlink("secret", trusted)
    assert userfiles.read_input(str(trusted), flag="--hosts-file", identity=None) == SECRET


def test_input_fifo_is_refused_without_blocking(place: Place) -> None:
    fifo = place.home / "hosts"
    os.mkfifo(fifo)
    os.chown(fifo, place.user.uid, place.user.gid)
    with pytest.raises(UsageError, match="not a regular file"):
        userfiles.read_input(str(fifo), flag="--hosts-file", identity=place.identity)


def test_output_identity_prefers_user_then_sudo_caller() -> None:
    user = userfiles.Identity(uid=4242, gid=4243, groups=(4243,))
    assert userfiles.output_identity(user, {"SUDO_UID": "1000", "SUDO_GID": "1000"}) == user
    sudo = userfiles.output_identity(None, {"SUDO_UID": "54321", "SUDO_GID": "54322"})
    assert (sudo.uid, sudo.gid) == (54321, 54322)
    assert userfiles.output_identity(None, {"SUDO_UID": "0", "SUDO_GID": "0"}) is None
    assert userfiles.output_identity(None, {"SUDO_UID": "x"}) is None
    assert userfiles.output_identity(None, {}) is None


def test_refused_output_removes_the_outputs_already_created(place: Place) -> None:
    good = place.home / "flows.jsonl"
    link = place.link("run.pcapng", place.secret)
    with pytest.raises(UsageError, match="symbolic link"):
        options.parse(["--flow-log", str(good), "-c", str(link), "true"])
    assert not good.exists() and place.secret_intact()


def test_hosts_file_through_a_link_is_refused_for_user(place: Place) -> None:
    link = place.link("hosts", place.secret)
    with pytest.raises(UsageError, match="Permission denied"):
        options.parse(["--user", place.user.name, "--hosts-file", str(link), "true"])
