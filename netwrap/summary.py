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
    out = [
        f"backend:  {outcome.backend}{version} ({mode})",
        f"command:  {' '.join(config.command)} as {who}",
        f"controls: {'; '.join(controls)}",
        "capture:  off",
        f"exit:     {outcome.exit_status}",
    ]
    out += [f"note:     {note}" for note in outcome.notes]
    return out


def report(config: Config, outcome, stream: TextIO) -> None:
    stream.write("".join(f"netwrap: {line}\n" for line in lines(config, outcome)))
    stream.flush()
