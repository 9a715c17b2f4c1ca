"""Options that change who runs the command, what netwrap says, which backend
runs and what the policy's default is, end to end in the test world.

Each test checks what the far end saw (the world's logs, file owners, the
capture's packets), not only the exit status.
"""

from __future__ import annotations

import json

import pytest
from test_capture import CURL, URL_V4, assert_full_http_conversation, tshark
from test_policy import http, probe, refused
from test_slirp4netns_e2e import host_ping_group_range
from tool_path import path_without

from world.harness import World

HELLO = "ok 200 hello from the world"


# -- --user NAME (rootful) ---------------------------------------------------------------------------

def test_user_runs_the_command_as_that_user(world: World, backend) -> None:
    folder = world.user_dir("as-user")
    mark = world.mark()
    script = f"id -u; id -g; touch {folder}/made-by-command; {' '.join(CURL)} {URL_V4}"
    done = world.netwrap(*backend.argv, "--user", world.user.name, "--", "sh", "-c", script, user=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(world.user.uid), str(world.user.gid), "hello from the world"]
    made = (folder / "made-by-command").stat()
    assert (made.st_uid, made.st_gid) == (world.user.uid, world.user.gid)
    assert [r["path"] for r in world.http_log(since=mark)] == ["/hello"]


# -- --default-policy ----------------------------------------------------------------------------------

def test_default_policy_deny_refuses_what_no_rule_names(world: World, backend, as_user: bool) -> None:
    mark = world.mark()
    # Without --default-policy, a list of --deny rules leaves everything else allowed.
    flags = ["--deny", f"{World.WORLD_V4}:8080", "--default-policy", "deny"]
    v4, v6 = probe(world, backend, flags, [http(f"http://{World.WORLD_V4}/hello"),
                                           http(f"http://[{World.WORLD_V6}]/hello")], user=as_user)
    assert refused(v4) and refused(v6), (v4, v6)
    assert world.http_log(since=mark) == []


def test_default_policy_allow_keeps_what_no_rule_names(world: World, backend, as_user: bool) -> None:
    mark = world.mark()
    # Without --default-policy, any --allow makes the default deny.
    flags = ["--allow", f"{World.WORLD_V4}:80", "--default-policy", "allow"]
    [alt] = probe(world, backend, flags, [http(f"http://{World.WORLD_V4}:8080/hello")], user=as_user)
    assert alt["result"] == HELLO, alt
    assert [(r["local"], r["port"]) for r in world.http_log(since=mark)] == [(World.WORLD_V4, 8080)]


# -- --as-root with a policy ------------------------------------------------------------------------

def test_as_root_still_gets_the_policy(world: World, backend, as_user: bool) -> None:
    mark = world.mark()
    flags = ["--as-root", "--allow", f"{World.WORLD_V4}:80"]
    allowed, other = probe(world, backend, flags, [http(f"http://{World.WORLD_V4}/hello"),
                                                   http(f"http://{World.WORLD_V4}:8080/hello")], user=as_user)
    assert allowed["result"] == HELLO and refused(other), (allowed, other)
    assert [(r["local"], r["port"]) for r in world.http_log(since=mark)] == [(World.WORLD_V4, 80)]
    done = world.netwrap(*backend.argv, *flags, "--", "id", "-u", user=as_user)
    assert done.returncode == 0 and done.stdout == "0\n", done.stderr


# -- -q ----------------------------------------------------------------------------------------------

def test_quiet_silences_warnings_not_errors(world: World) -> None:
    # Rootless tunrelay relays ping through the host's ping sockets; with the
    # host's ping_group_range closed it cannot, and says so once, on stderr.
    argv = ["--backend", "tunrelay", "--", "ping", "-c", "1", "-W", "1", World.WORLD_V4]
    with host_ping_group_range(world, "1 0"):
        loud = world.netwrap(*argv)
        quiet = world.netwrap("-q", *argv)
    assert "netwrap: warning: tunrelay cannot relay ping" in loud.stderr, loud.stderr
    assert "netwrap" not in quiet.stderr, quiet.stderr
    assert loud.returncode == quiet.returncode != 0  # the command's own status, either way
    refused_run = world.netwrap("-q", "--backend", "no-such-backend", "--", "true")
    assert refused_run.returncode == 2 and refused_run.stderr.startswith("netwrap: error: unknown backend")


# -- -C child, -C egress -------------------------------------------------------------------------------

def _interface_descriptions(world: World, path) -> list[str]:
    info = world.run(["capinfos", str(path)])
    assert info.returncode == 0 and info.stderr == "", info.stderr
    return [line.split("=", 1)[1].strip() for line in info.stdout.splitlines()
            if line.strip().startswith("Description =")]


@pytest.mark.parametrize("view", ["child", "egress"])
def test_capture_point_alone_writes_one_file_of_that_view(world: World, backend, as_user: bool, view: str) -> None:
    folder = world.user_dir("cap")
    path = folder / "run.pcapng"
    done = world.netwrap(*backend.argv, "-C", view, "-c", str(path), "--", *CURL, URL_V4, user=as_user)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in folder.iterdir()] == ["run.pcapng"]
    descriptions = _interface_descriptions(world, path)
    assert descriptions and all(d.startswith(f"netwrap view={view} ") for d in descriptions), descriptions
    if view == "egress":
        # The host-side flow: from the host's own address to the server.
        assert_full_http_conversation(world, path, World.WORLD_V4, client=World.HOST_V4)
    else:
        assert_full_http_conversation(world, path, World.WORLD_V4)
    tshark(world, path)  # read back without warnings


# -- --backend auto --------------------------------------------------------------------------------

@pytest.mark.parametrize("missing, chosen", [
    ((), "pasta"),
    (("pasta",), "slirp4netns"),
    (("pasta", "slirp4netns"), "tunrelay"),
], ids=["all-present", "no-pasta", "neither"])
def test_auto_order_is_pasta_then_slirp4netns_then_tunrelay(world: World, as_user: bool, missing, chosen) -> None:
    mark = world.mark()
    helpers, env = world.helpers_from(path_without(world, *missing, user=as_user), user=as_user)
    done = world.netwrap(*helpers, "--summary", "--", "curl", "-sS", "--max-time", "10", "-o", "/dev/null",
                         f"http://{World.WORLD_V4}/auto", user=as_user, env=env)
    assert done.returncode == 0, done.stderr
    [line] = [l for l in done.stderr.splitlines() if l.startswith("netwrap: backend:")]
    assert line.split()[2] == chosen, done.stderr
    assert [r["path"] for r in world.http_log(since=mark)] == ["/auto"]


# -- a third-party backend -------------------------------------------------------------------------

# tests/plugins/netwrap-loopback: an outside distribution (installed by
# tests/setup.sh) whose backend netwrap finds only through its entry point.
LOOPBACK_ONLY = r"""
import json, socket, threading
srv = socket.create_server(("127.0.0.1", 0))
threading.Thread(target=lambda: srv.accept()[0].sendall(b"local"), daemon=True).start()
local = socket.create_connection(srv.getsockname(), timeout=5).recv(16).decode()
try:
    socket.create_connection(("%s", 80), timeout=5)
    outside = "ok"
except OSError as exc:
    outside = type(exc).__name__
print(json.dumps({"local": local, "outside": outside, "links": sorted(socket.if_nameindex())}))
"""


def test_third_party_backend_from_its_entry_point(world: World, as_user: bool) -> None:
    listing = world.netwrap("backends", user=as_user)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    at = lines.index("loopback: available, version 1.0.3 (plugin)")
    assert lines[at + 1] == "  capabilities: ipv4, ipv6, tcp, udp"
    mark = world.mark()
    done = world.netwrap("--backend", "loopback", "--summary", "--", world.python, "-c",
                         LOOPBACK_ONLY % World.WORLD_V4, user=as_user)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["local"] == "local" and seen["outside"] == "OSError", seen  # ENETUNREACH: no uplink
    assert [name for _, name in seen["links"]] == ["lo"]
    assert "netwrap: backend:  loopback 1.0.3 (plugin)" in done.stderr
    assert world.http_log(since=mark) == []
