"""What e2e tests run inside the sandbox to see which host services it reaches.

PROBE is a Python program (run with `world.python -c PROBE TARGET...`, each
TARGET "address port"): it connects to each, sends a request line naming the
address (GET /probe/ADDRESS) so the far end's log shows who got through, and
prints {"address port": "ok" | "no-http" | the error's name} as JSON.
"""

from __future__ import annotations

import os
import time

PROBE = """
import json, socket, sys
out = {}
for target in sys.argv[1:]:
    addr, port = target.rsplit(" ", 1)
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.settimeout(2)
    try:
        s.connect((addr, int(port)))
        s.sendall(b"GET /probe/" + addr.encode() + b" HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        out[target] = "ok" if s.recv(64).startswith(b"HTTP/") else "no-http"
    except OSError as exc:
        out[target] = type(exc).__name__
    finally:
        s.close()
print(json.dumps(out))
"""


def free_port() -> int:
    """A port in 20000-39999 that differs between runs and between concurrent test processes."""
    return 20000 + (os.getpid() * 7 + time.monotonic_ns() // 1000) % 20000
