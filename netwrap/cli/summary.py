"""The --summary report: printed on stderr after the command, only when asked."""

from __future__ import annotations

from typing import TextIO

from netwrap.config import Config


def lines(config: Config, outcome) -> list[str]:
    mode = "rootful" if config.rootful else "rootless"
    if config.as_root:
        who = "root of the sandbox (--as-root: controls not tamper-proof)"
    elif config.user is not None:
        who = f"user {config.user.name}"
    else:
        who = f"uid {config.caller_uid} in a nested user namespace"
    version = f" {outcome.backend_version}" if outcome.backend_version else ""
    controls = ["host loopback " + ("open (--allow-host-loopback)" if config.allow_host_loopback else "closed")]
    if config.dns:
        controls.append("DNS forced to " + ", ".join(config.dns))
    elif outcome.resolvers:
        controls.append("DNS via " + ", ".join(outcome.resolvers))
    if config.hosts_file or config.add_hosts:
        what = [f"file {config.hosts_file}"] if config.hosts_file else []
        what += [f"{name}={ip}" for name, ip in config.add_hosts]
        controls.append("hosts " + ", ".join(what))
    if config.publish:
        controls.append("published " + ", ".join(p.describe() for p in config.publish))
    out = [
        f"backend:  {outcome.backend}{version} ({mode})",
        f"command:  {' '.join(config.command)} as {who}",
        f"controls: {'; '.join(controls)}",
        *_policy_lines(outcome),
        *_capture_lines(outcome),
        f"exit:     {outcome.exit_status}",
    ]
    out += [f"note:     {note}" for note in outcome.notes]
    return out


def _policy_lines(outcome) -> list[str]:
    """The network policy in force and how many flows it allowed and refused."""
    engine = getattr(outcome, "policy", None)
    if engine is None:
        return []
    out = [f"policy:   {'; '.join(engine.controls())}"]
    flows = engine.flows_line()
    if flows:
        out.append(f"flows:    {flows}")
    return out


def _capture_lines(outcome) -> list[str]:
    """One line per capture view: file, packets captured, packets dropped."""
    views = getattr(outcome, "captures", None) or []
    return [f"capture:  {view.line()}" for view in views] or ["capture:  off"]


def report(config: Config, outcome, stream: TextIO) -> None:
    stream.write("".join(f"netwrap: {line}\n" for line in lines(config, outcome)))
    stream.flush()
