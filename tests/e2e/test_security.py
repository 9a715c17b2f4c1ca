"""netwrap as root, attacked as a second local user would (issue 18).

The attacker is the world's unprivileged user (nwtest): it owns a directory
(no sticky bit) holding links to root's files, and runs setuid-root and
file-capability programs inside the sandbox. Every test checks what
happened to root's files (their bytes) or what the world's servers saw,
not only netwrap's exit status.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from world.harness import World

SECRET = b"root's secret: 8c1f0e\n"
PASTA = ["--backend", "pasta"]  # the backend for the --offline bypass


class Scene:
    """A root-only vault with secrets, and the user's own directory of traps."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.trap = world.user_dir("trap")
        self.vault = Path(tempfile.mkdtemp(prefix="vault-", dir=world.tmp / "scratch"))
        self.vault.chmod(0o700)
        self.secrets = {}
        for name in ("secret1", "secret2", "secret3"):
            path = self.vault / name
            path.write_bytes(SECRET + name.encode())
            path.chmod(0o600)
            self.secrets[name] = hashlib.sha256(path.read_bytes()).hexdigest()

    def link(self, name: str, target: Path) -> Path:
        path = self.trap / name
        os.symlink(target, path)
        os.lchown(path, self.world.user.uid, self.world.user.gid)
        return path

    def untouched(self) -> bool:
        now = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in self.vault.iterdir()}
        return now == self.secrets


@pytest.fixture
def scene(world: World) -> Iterator[Scene]:
    made = Scene(world)
    yield made
    shutil.rmtree(made.vault)


def one_line_refusal(done: subprocess.CompletedProcess, *words: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, done.stderr
    for word in words:
        assert word in line, line
    return line


# -- 1. root writes through another user's symlinks ------------------------------------------------

def test_capture_through_a_users_symlink_leaves_roots_file_alone(world: World, scene: Scene) -> None:
    link = scene.link("run.pcapng", scene.vault / "secret1")
    done = world.netwrap(*PASTA, "-c", str(link), "--", "true", user=False)
    one_line_refusal(done, str(link), "symbolic link")
    assert scene.untouched()


def test_both_capture_siblings_are_opened_safely(world: World, scene: Scene) -> None:
    link = scene.link("dump.egress.pcapng", scene.vault / "secret1")
    done = world.netwrap(*PASTA, "-c", str(scene.trap / "dump"), "-C", "both", "--", "true", user=False)
    one_line_refusal(done, str(link), "symbolic link")
    assert scene.untouched()
    assert sorted(os.listdir(scene.trap)) == ["dump.egress.pcapng"]  # the child sibling made first is gone


@pytest.mark.parametrize("name, target", [("flows.jsonl", "secret2"), ("new.jsonl", "does-not-exist")])
def test_flow_log_through_a_users_symlink_writes_nothing(world: World, scene: Scene, name: str,
                                                        target: str) -> None:
    link = scene.link(name, scene.vault / target)
    done = world.netwrap(*PASTA, "--block-private", "--flow-log", str(link), "--", "true", user=False)
    one_line_refusal(done, str(link), "symbolic link")
    assert scene.untouched()
    assert not (scene.vault / "does-not-exist").exists()


def test_fifo_as_output_is_refused_at_once(world: World, scene: Scene) -> None:
    fifo = scene.trap / "flows.jsonl"
    os.mkfifo(fifo)
    os.chown(fifo, world.user.uid, world.user.gid)
    done = world.netwrap(*PASTA, "--block-private", "--flow-log", str(fifo), "--", "true", user=False, timeout=20)
    one_line_refusal(done, str(fifo), "FIFO")


@pytest.mark.parametrize("how", ["sudo", "user"])
def test_root_writes_outputs_as_the_user_they_are_for(world: World, scene: Scene, how: str) -> None:
    path = scene.trap / "run.pcapng"
    log = scene.trap / "flows.jsonl"
    if how == "sudo":
        args, env = [], {"SUDO_UID": str(world.user.uid), "SUDO_GID": str(world.user.gid)}
    else:
        args, env = ["--user", world.user.name], {}
    done = world.netwrap(*PASTA, *args, "--block-private", "--flow-log", str(log), "-c", str(path), "--",
                         "true", user=False, env=env)
    assert done.returncode == 0, done.stderr
    for out in (path, log):
        st = out.stat()
        assert (st.st_uid, st.st_gid) == (world.user.uid, world.user.gid), out
    assert path.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"  # a pcapng section header was written through the fd
    # Where the user may not create files, root does not create them for it.
    done = world.netwrap(*PASTA, *args, "-c", str(scene.vault / "x.pcapng"), "--", "true", user=False, env=env)
    one_line_refusal(done, "Permission denied")
    assert scene.untouched()


# -- 2. --hosts-file shows root-only files to the --user command ----------------------------------

def test_hosts_file_link_to_roots_file_is_not_shown_to_the_user(world: World, scene: Scene) -> None:
    link = scene.link("hosts", scene.vault / "secret3")
    done = world.netwrap(*PASTA, "--user", world.user.name, "--hosts-file", str(link), "--", "cat", "/etc/hosts",
                         user=False)
    one_line_refusal(done, str(link), "Permission denied")
    assert "secret" not in done.stdout


# -- 3. the command cannot regain privilege ---------------------------------------------------------

STATUS = ("grep -E '^(NoNewPrivs|CapAmb|CapInh|CapPrm|CapEff):' /proc/self/status; "
          "\"$PY\" -c 'import ctypes; print(\"Securebits:\\t%d\" % ctypes.CDLL(None).prctl(27, 0, 0, 0, 0))'")


@pytest.mark.parametrize("who, args, holds_nothing", [
    (True, [], True),
    (True, ["--as-root"], False),
    (False, ["--user", "nwtest"], True),
    (False, [], False),
    (False, ["--as-root"], False),
], ids=["rootless", "rootless-as-root", "rootful-user", "rootful", "rootful-as-root"])
def test_command_starts_with_no_new_privs(world: World, who: bool, args: list[str], holds_nothing: bool) -> None:
    done = world.netwrap(*PASTA, *args, "--", "sh", "-c", STATUS, user=who, env={"PY": world.python})
    assert done.returncode == 0, done.stderr
    status = dict(line.split(":\t") for line in done.stdout.splitlines())
    assert status["NoNewPrivs"] == "1", done.stdout
    assert int(status["CapAmb"], 16) == 0, done.stdout
    if holds_nothing:
        for key in ("CapInh", "CapPrm", "CapEff"):
            assert int(status[key], 16) == 0, done.stdout
        # NOROOT, its lock, setuid fixup locked off, no ambient raise and its lock (linux/securebits.h).
        assert int(status["Securebits"]) == 0x1 | 0x2 | 0x8 | 0x40 | 0x80, done.stdout
    else:
        assert int(status["CapEff"], 16) != 0, done.stdout  # --as-root and rootful root keep what they document


@pytest.fixture(scope="module")
def helpers(world: World) -> Iterator[Path]:
    """Privileged copies of nft, ip and python: setuid root, and with file capabilities."""
    if not shutil.which("setcap"):
        pytest.fail("setcap is missing: tests/setup.sh installs libcap2-bin")
    where = Path(tempfile.mkdtemp(prefix="helpers-", dir=world.tmp / "scratch"))
    where.chmod(0o755)
    python = os.path.realpath("/usr/bin/python3")
    for name, source in (("nft", shutil.which("nft")), ("ip", shutil.which("ip")), ("python", python)):
        suid = where / f"{name}-suid"
        shutil.copy(source, suid)
        os.chown(suid, 0, 0)
        suid.chmod(0o4755)
        caps = where / f"{name}-caps"
        shutil.copy(source, caps)
        caps.chmod(0o755)
        subprocess.run(["setcap", "cap_net_admin,cap_net_raw+ep", str(caps)], check=True, timeout=10)
    assert (where / "nft-suid").stat().st_mode & stat.S_ISUID
    # The helpers are real: outside the sandbox, the user gets root's power through them.
    done = world.run([str(where / "python-caps"), "-c", RAW], timeout=20)
    assert done.stdout.strip() == "raw=open", (done.stdout, done.stderr)
    yield where
    shutil.rmtree(where)


RAW = """
import socket
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print("raw=open")
except OSError as e:
    print("raw=%d" % e.errno)
"""

TAMPER = r"""
for how in suid caps; do
  "$H/nft-$how" flush ruleset; echo "nft_$how=$?"
  "$H/ip-$how" route del default; echo "route_$how=$?"
  "$H/ip-$how" -6 route del default; echo "route6_$how=$?"
  "$H/python-$how" -c "$RAW" | sed "s/^/${how}_/"
done
if command -v sudo >/dev/null; then
  sudo -n nft flush ruleset; echo "sudo=$?"
fi
ip route show default | grep -q . && echo "route_kept=yes"
curl -s -m 3 http://93.184.215.14/hello; echo "after=$?"
"""


@pytest.mark.parametrize("who, args", [(True, []), (False, ["--user", "nwtest"])], ids=["rootless", "rootful-user"])
def test_privileged_helpers_cannot_lift_offline(world: World, helpers: Path, who: bool, args: list[str]) -> None:
    mark = world.mark()
    done = world.netwrap(*PASTA, *args, "--offline", "--", "sh", "-c", TAMPER, user=who,
                         env={"H": str(helpers), "RAW": RAW}, timeout=60)
    assert done.returncode == 0, done.stderr
    results = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    for key in ("nft_suid", "nft_caps", "route_suid", "route_caps", "route6_suid", "route6_caps"):
        assert results[key] != "0", (key, done.stdout, done.stderr)
    # EPERM: both helpers ran, without the privilege their files carry.
    assert results["suid_raw"] == results["caps_raw"] == "1", done.stdout
    assert results.get("sudo", "1") != "0", done.stdout
    assert results["route_kept"] == "yes", done.stdout
    assert results["after"] != "0", done.stdout
    assert world.http_log(since=mark) == []


@pytest.mark.parametrize("who, args", [(True, []), (False, ["--user", "nwtest"])], ids=["rootless", "rootful-user"])
def test_file_capability_programs_still_run_without_their_privilege(world: World, who: bool,
                                                                    args: list[str]) -> None:
    # Debian's ping carries cap_net_raw+ep: an emptied bounding set would make exec fail (EPERM);
    # under NO_NEW_PRIVS it starts without the capability and uses a ping socket.
    done = world.netwrap(*PASTA, *args, "--", "ping", "-4", "-c", "1", "-W", "3", World.WORLD_V4, user=who)
    assert done.returncode == 0, done.stderr
    assert "1 received" in done.stdout, done.stdout
