"""The backend contract: what the Protocols declare, that the shipped backends
conform, and that no backend imports the front-end."""

from __future__ import annotations

import ast
import contextlib
import inspect
import threading
from pathlib import Path

import pytest

from netwrap.backends import BUILTIN, Backend, Handle, NetworkInfo, _load
from netwrap.backends.pasta import PastaBackend, PastaHandle
from netwrap.backends.slirp4netns import Slirp4netnsBackend, Slirp4netnsHandle
from netwrap.backends.tunrelay.backend import TunrelayBackend, TunrelayHandle

BACKENDS_DIR = Path(__file__).resolve().parents[3] / "backends"

# What the front-end uses of a backend and of a started one, written out.
BACKEND_MEMBERS = {"name", "package", "capabilities", "probe", "start"}
HANDLE_MEMBERS = {"pid", "enforces_policy", "wait_ready", "fileno", "on_readable", "poll", "diagnostics", "stop"}
SHIPPED = {PastaBackend: PastaHandle, Slirp4netnsBackend: Slirp4netnsHandle, TunrelayBackend: TunrelayHandle}


def _declared(protocol: type) -> set[str]:
    own = set(protocol.__dict__.get("__annotations__", {}))
    own |= {name for name, value in protocol.__dict__.items() if inspect.isfunction(value)}
    return {name for name in own if not name.startswith("__")}


def test_the_protocols_declare_what_the_front_end_uses():
    assert _declared(Backend) == BACKEND_MEMBERS
    assert _declared(Handle) == HANDLE_MEMBERS


def test_the_builtin_table_names_the_shipped_classes():
    assert {_load(spec) for spec in BUILTIN.values()} == set(SHIPPED)


@pytest.mark.parametrize("backend", list(SHIPPED), ids=lambda c: c.__name__)
def test_each_shipped_backend_has_every_member_and_the_start_signature(backend):
    assert all(hasattr(backend, name) for name in BACKEND_MEMBERS), BACKEND_MEMBERS - set(dir(backend))
    assert isinstance(backend.name, str) and isinstance(backend.package, str)
    params = inspect.signature(backend.start).parameters
    assert list(params) == ["self", "target", "config", "probe"]
    assert params["probe"].default is None
    # start() says which handle it returns: the one checked below.
    assert inspect.signature(backend.start).return_annotation.strip("\"'") == SHIPPED[backend].__name__


class _Process:
    pid = 4242
    argv = ["helper"]


def _started_handles() -> list[object]:
    """One instance of each handle class, built without starting anything."""
    tunrelay = TunrelayHandle(stack=contextlib.ExitStack(), engine=None, thread=threading.Thread(target=len),
                              path="nat", notify_r=-1, info=NetworkInfo(), verbosity=0)
    pasta = PastaHandle(process=_Process(), fifo_fd=-1, workdir="/nonexistent")
    slirp = Slirp4netnsHandle(process=_Process(), ready_fd=-1, exit_fd=-1, workdir="/nonexistent",
                              api_socket="/x", target=None, ipv6=False)
    return [tunrelay, pasta, slirp]


@pytest.mark.parametrize("handle", _started_handles(), ids=lambda h: type(h).__name__)
def test_each_handle_satisfies_the_handle_protocol(handle):
    assert isinstance(handle, Handle)
    assert handle.enforces_policy is False  # until a backend's engine takes the policy on
    assert all(callable(getattr(handle, name)) for name in HANDLE_MEMBERS - {"pid", "enforces_policy"})


def test_a_handle_without_enforces_policy_is_not_a_handle():
    class Old:
        pid = None

        def wait_ready(self, timeout): ...
        def fileno(self): ...
        def on_readable(self): ...
        def poll(self): ...
        def diagnostics(self): ...
        def stop(self, timeout=2.0): ...

    assert not isinstance(Old(), Handle)
    Old.enforces_policy = False
    assert isinstance(Old(), Handle)


# --- backends never import the front-end ------------------------------------------------------

ALLOWED_MODULES = ("netwrap.errors", "netwrap.config", "netwrap.linux", "netwrap.backends")
ALLOWED_FROM_NETWRAP = {"__version__", "errors", "config", "linux", "backends"}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def front_end_imports(source: str) -> list[str]:
    """netwrap modules a backend module imports at run time that it may not
    (imports under `if TYPE_CHECKING:` are for type checkers only and never run)."""
    found: list[str] = []

    def allowed(module: str) -> bool:
        return any(module == a or module.startswith(a + ".") for a in ALLOWED_MODULES)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names
                         if (a.name == "netwrap" or a.name.startswith("netwrap.")) and not allowed(a.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "netwrap":
                found.extend(f"netwrap.{a.name}" for a in node.names if a.name not in ALLOWED_FROM_NETWRAP)
            elif node.module.startswith("netwrap.") and not allowed(node.module):
                found.append(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


def test_the_checker_finds_front_end_imports_wherever_they_are():
    source = (
        "from typing import TYPE_CHECKING\n"
        "import netwrap.sandbox.setup\n"
        "from netwrap import policy, __version__\n"
        "from netwrap.linux.commands import run\n"
        "from . import nat\n"
        "if TYPE_CHECKING:\n"
        "    from netwrap.sandbox.calls import SandboxCalls\n"
        "def start():\n"
        "    from netwrap.policy.runtime import start_time_decide\n"
        "    from netwrap.cli import options\n"
        "    import netwrap.dns.files, netwrap.config\n"
        "class H:\n"
        "    def f(self):\n"
        "        from netwrap.capture.session import CaptureSession\n"
    )
    assert front_end_imports(source) == [
        "netwrap.sandbox.setup", "netwrap.policy", "netwrap.policy.runtime", "netwrap.cli", "netwrap.dns.files",
        "netwrap.capture.session",
    ]


def test_no_backend_module_imports_the_front_end():
    modules = sorted(BACKENDS_DIR.rglob("*.py"))
    assert BACKENDS_DIR / "tunrelay" / "backend.py" in modules and len(modules) > 10
    offenders = {str(p.relative_to(BACKENDS_DIR)): bad for p in modules
                 if (bad := front_end_imports(p.read_text(encoding="utf-8")))}
    assert offenders == {}


def test_pasta_sandbox_has_its_own_addresses_not_the_hosts() -> None:
    # pasta copies the host's address by default, which would shadow the host;
    # the sandbox gets slirp4netns' layout instead, and DNS at 10.0.2.3.
    from netwrap.backends import Probe, Target
    from netwrap.config import Config
    probe = Probe(available=True, path="/usr/bin/pasta",
                  options=frozenset({"no-map-gw", "dns-forward", "foreground", "config-net", "pid"}))
    argv = PastaBackend().argv(Target(pid=4242, rootful=False, netns_fd=-1),
                               Config(command=("true",), rootful=False, caller_uid=1000, caller_gid=1000), probe, pidfile="PID")
    pairs = list(zip(argv, argv[1:]))
    assert [v for o, v in pairs if o == "--address"] == ["10.0.2.100", "fd00::100"]
    assert [v for o, v in pairs if o == "--gateway"] == ["10.0.2.2", "fd00::2"]
    assert ("--netmask", "24") in pairs and ("--dns-forward", "10.0.2.3") in pairs
    assert "--no-map-gw" in argv and ("--tcp-ns", "none") in pairs and ("--udp-ns", "none") in pairs


def test_pasta_iface_binds_both_families_to_the_interface() -> None:
    from netwrap.backends import Probe, Target
    from netwrap.config import Config
    from netwrap.errors import NetwrapError
    from netwrap.linux.interfaces import Interface
    options = frozenset({"no-map-gw", "foreground", "config-net", "pid", "outbound-if4", "outbound-if6"})
    probe = Probe(available=True, path="/usr/bin/pasta", options=options)
    uplink = Interface(name="up2", index=7, ipv4=("198.18.0.2",))  # no IPv6: bound anyway, so it fails closed
    cfg = Config(command=("true",), rootful=False, caller_uid=1000, caller_gid=1000, outbound_interface=uplink)
    target = Target(pid=4242, rootful=False, netns_fd=-1)
    argv = PastaBackend().argv(target, cfg, probe, pidfile="PID")
    pairs = list(zip(argv, argv[1:]))
    assert ("--outbound-if4", "up2") in pairs and ("--outbound-if6", "up2") in pairs
    assert argv[-1] == "4242"
    plain = PastaBackend().argv(target, Config(command=("true",), rootful=False, caller_uid=1000, caller_gid=1000),
                                probe, pidfile="PID")
    assert not [a for a in plain if a.startswith("--outbound")]
    old = Probe(available=True, path="/usr/bin/pasta", options=options - {"outbound-if6"})
    with pytest.raises(NetwrapError, match="--outbound-if6"):
        PastaBackend().argv(target, cfg, old, pidfile="PID")


@pytest.mark.parametrize("resolv_conf, warned", [
    ("nameserver 127.0.0.53\noptions edns0\n", True),  # systemd-resolved's stub
    ("# generated\nnameserver 2001:db8::53\nnameserver 127.0.0.1\n", True),  # pasta forwards IPv4 DNS to the first IPv4
    ("nameserver 192.0.2.53\nnameserver 127.0.0.53\n", False),
    ("", False),
])
def test_pasta_warns_when_iface_cuts_it_off_from_a_loopback_resolver(resolv_conf: str, warned: bool) -> None:
    from netwrap.backends.pasta import iface_dns_problem
    problem = iface_dns_problem(resolv_conf, "up2")
    assert (problem is not None) is warned
    if warned:
        assert problem.startswith("--iface up2: pasta cannot reach the host's resolver 127.0.0.") and "-d RESOLVER" in problem


def test_pasta_publishes_only_the_ports_asked_for() -> None:
    from netwrap.backends import Probe, Target
    from netwrap.config import Config, PublishedPort
    new = Probe(available=True, path="/usr/bin/pasta", options=frozenset({"map-host-loopback"}))
    old = Probe(available=True, path="/usr/bin/pasta", options=frozenset({"no-map-gw"}))
    target = Target(pid=4242, rootful=False, netns_fd=-1)

    def pairs(probe: Probe, *published: PublishedPort) -> list[tuple[str, str]]:
        config = Config(command=("true",), rootful=False, caller_uid=1000, caller_gid=1000, publish=published)
        argv = PastaBackend().argv(target, config, probe, pidfile="PID")
        return [(o, v) for o, v in zip(argv, argv[1:]) if o in ("--tcp-ports", "--udp-ports")]

    asked = (PublishedPort(proto="tcp", host_port=8080, sandbox_port=80),
             PublishedPort(proto="tcp", host_ip="2001:db8::1", host_port=8443, sandbox_port=443),
             PublishedPort(proto="udp", host_ip="192.0.2.1", host_port=5353, sandbox_port=53))
    assert pairs(new) == [("--tcp-ports", "none"), ("--udp-ports", "none")]
    assert pairs(new, *asked) == [("--tcp-ports", "8080:80"), ("--tcp-ports", "2001:db8::1/8443:443"),
                                  ("--udp-ports", "192.0.2.1/5353:53")]
    # The 2023 build loses UDP replies: netwrap relays that port itself, pasta gets none.
    assert pairs(old, *asked) == [("--tcp-ports", "8080:80"), ("--tcp-ports", "2001:db8::1/8443:443"),
                                  ("--udp-ports", "none")]


@pytest.mark.parametrize("options, nft, udp", [
    ({"map-host-loopback"}, None, True),  # 2024_08 and later answer published UDP
    ({"no-map-gw"}, "/usr/sbin/nft", True),  # the 2023 build: netwrap relays it, with nftables
    ({"no-map-gw"}, None, False),  # ... and cannot without
])
def test_pasta_declares_udp_publishing_where_it_or_netwrap_answers_it(monkeypatch, options, nft, udp) -> None:
    from netwrap.backends import CAP_PUBLISH, CAP_PUBLISH_IPV6, CAP_PUBLISH_KEEPS_PEER, CAP_PUBLISH_UDP, Probe
    from netwrap.backends import pasta
    from netwrap.config import Tools

    monkeypatch.setattr(pasta, "Tools", type("FakeTools", (), {"find": staticmethod(lambda: Tools(nft=nft))}))
    backend = PastaBackend()
    backend._probe = Probe(available=True, options=frozenset(options))
    assert {CAP_PUBLISH, CAP_PUBLISH_IPV6, CAP_PUBLISH_KEEPS_PEER} <= backend.capabilities
    assert (CAP_PUBLISH_UDP in backend.capabilities) == udp
