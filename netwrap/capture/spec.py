"""What `-c FILE` and `-C POINT` ask for, checked while the flags are parsed.

Nothing here opens a file or imports python-pcapng: a bad path or a missing
capability is a usage error (exit 2) before anything starts.

Capture points and the views they write:
  child        FILE: what the command sent and received (the default)
  egress       FILE: the host-side flows the backend opened (synthesised)
  wire-egress  FILE: the host's interfaces, filtered to those flows
               (needs CAP_NET_RAW on the host)
  both         FILE.child.pcapng and FILE.egress.pcapng
"""

from __future__ import annotations

import attrs

from netwrap.errors import UsageError

POINTS = ("child", "egress", "wire-egress", "both")
CAP_NET_RAW = 13


@attrs.frozen(kw_only=True)
class CaptureSpec:
    path: str
    point: str = "child"

    def files(self) -> dict[str, str]:
        """view name -> file it is written to."""
        if self.point != "both":
            return {self.point: self.path}
        stem = self.path[: -len(".pcapng")] if self.path.endswith(".pcapng") else self.path
        return {"child": f"{stem}.child.pcapng", "egress": f"{stem}.egress.pcapng"}


def parse_capture(path: str | None, point: str | None) -> CaptureSpec | None:
    """The checked CaptureSpec for `-c PATH -C POINT` (None without -c); UsageError if not usable."""
    if path is None:
        if point is not None:
            raise UsageError("--capture-point needs --capture FILE")
        return None
    spec = CaptureSpec(path=path, point=point or "child")
    if spec.point == "wire-egress" and not has_effective_capability(CAP_NET_RAW):
        raise UsageError("--capture-point wire-egress captures on the host's interfaces and needs "
                         "CAP_NET_RAW there: run netwrap as root (or use -C egress, which needs no privilege)")
    return spec


def has_effective_capability(cap: int) -> bool:
    """Whether this process holds `cap` in its effective set (in its own user namespace)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError):
        pass
    return False
