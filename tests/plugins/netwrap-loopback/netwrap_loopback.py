"""A backend that gives the sandbox nothing but its loopback.

It keeps to netwrap's public backend contract (netwrap.backends: Probe,
NetworkInfo, Target, Handle) and nothing else: what a third party may use.
"""

from __future__ import annotations

from netwrap.backends import CAP_IPV4, CAP_IPV6, CAP_TCP, CAP_UDP, NetworkInfo, Probe, Target

VERSION = "1.0.3"


class LoopbackHandle:
    pid = None
    enforces_policy = False

    def __init__(self) -> None:
        self._stopped = False

    def wait_ready(self, timeout: float) -> NetworkInfo:
        # Nothing to wait for: the sandbox's lo is already there.
        return NetworkInfo(interface="lo", addresses=("127.0.0.1", "::1"))

    def fileno(self) -> int | None:
        return None

    def on_readable(self) -> None:
        pass

    def poll(self) -> int | None:
        return None

    def diagnostics(self) -> str:
        return "loopback backend: no uplink"

    def stop(self, timeout: float = 2.0) -> None:
        self._stopped = True


class LoopbackBackend:
    name = "loopback"
    package = "netwrap-loopback"
    capabilities = frozenset({CAP_IPV4, CAP_IPV6, CAP_TCP, CAP_UDP})

    def probe(self) -> Probe:
        return Probe(available=True, version=f"{VERSION} (plugin)")

    def start(self, target: Target, config: object, probe: Probe | None = None) -> LoopbackHandle:
        return LoopbackHandle()
