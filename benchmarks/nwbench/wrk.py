"""The wrk probe: HTTP requests per second over many connections.

It runs against the world's own web server (worldd, on the world address,
port 80, already running): a Python server, so its ceiling (a few thousand
requests/s on two cores) is low, and the host row shows it; every path is
held to the same server, so the ratios still compare the paths.
"""

from __future__ import annotations

import re
from typing import Any

from .parse import ParseError
from .probes import Endpoint, Probe

WRK_CONNECTIONS = 100


def _wrk_client(server: Endpoint, seconds: float) -> list[str]:
    return ["wrk", "-c", str(WRK_CONNECTIONS), "-t", "2", "-d", f"{max(1, round(seconds))}s", "--timeout", "10s",
            f"http://{server.address}:{server.port}/hello"]


def wrk_output(text: str) -> tuple[float, dict[str, Any]]:
    """Requests per second from wrk's report, and its error counts."""
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if rate is None:
        raise ParseError(f"wrk printed no Requests/sec: {text[-200:]!r}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return float(rate.group(1)), {
        "socket_errors": sum(map(int, errors.groups())) if errors else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


WRK = Probe(name=f"http-{WRK_CONNECTIONS}", metric=f"HTTP requests/s, {WRK_CONNECTIONS} connections (wrk, worldd)",
            unit="req/s", higher_is_better=True, kind="throughput", server="world-http",
            client=_wrk_client, parse=wrk_output, overhead=2.0)
