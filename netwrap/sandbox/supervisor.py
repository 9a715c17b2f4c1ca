"""netwrap's parent process: start the sandbox and the backend, run, tear down.

The parent stays in the host's namespaces. It owns the backend, the control
channel and (later) the engines; one select() loop watches a signalfd, the
channel and the backend's output. Stopping is a deadline first, then force;
every resource registers its undo on an ExitStack the moment it exists.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from typing import TYPE_CHECKING, Callable, TypeVar

import attrs

from netwrap.sandbox import setup
from netwrap.linux import syscalls
from netwrap.backends import Backend, Decide, NetworkInfo, Probe, Target
from netwrap.config import Config
from netwrap.sandbox.channel import Channel, ChannelClosed, SandboxError
from netwrap.sandbox.messages import BackendReady, Exited, Message, NsReady, Started
from netwrap.errors import NetwrapError
from netwrap.linux.commands import wait_pid
from netwrap.sandbox.calls import SandboxCalls
from netwrap.linux.scratch import make_private_dir, remove_private_dir
from netwrap.sandbox.init import FORWARDED, exit_code, holder_main

if TYPE_CHECKING:
    from netwrap.policy.runtime import PolicyEngine

READY_TIMEOUT = 15.0

M = TypeVar("M")


@attrs.define(kw_only=True)
class Outcome:
    """What happened, for the exit status and --summary."""

    backend: str
    backend_version: str | None
    exit_status: int | None = None
    started: bool = False
    resolvers: tuple[str, ...] = ()
    notes: list[str] = attrs.field(factory=list)
    # -c: one netwrap.capture.session.ViewSummary per file written.
    captures: list = attrs.field(factory=list)
    # The network policy's engine, when one ran.
    policy: PolicyEngine | None = None


def run(config: Config, backend: Backend, probe: Probe, *, nft: str | None = None) -> Outcome:
    outcome = Outcome(backend=backend.name, backend_version=probe.version)
    with contextlib.ExitStack() as stack:
        capture = None
        if config.capture is not None:
            from netwrap.capture.session import CaptureSession

            # First: a path that cannot be written is exit 2 with nothing started.
            capture = CaptureSession.open(config.capture, backend=backend.name,
                                          fds={out.path: out.fd for out in config.outputs})
            stack.callback(_end_capture, capture, outcome)
        # Signals reach us through a signalfd so the loop sees who sent them:
        # a terminal's SIGINT (si_code SI_KERNEL) already went to the command.
        watched = [*FORWARDED, signal.SIGCHLD]
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
        stack.callback(signal.pthread_sigmask, signal.SIG_SETMASK, old_mask)
        sigfd = syscalls.signalfd(watched)
        stack.callback(os.close, sigfd)
        # Runs first on the way out: a terminal's Ctrl-C reached the command
        # and us alike; if the command's exit was read before that SIGINT,
        # it is still queued and would hit us once the mask is restored,
        # turning the command's status into 130.
        stack.callback(syscalls.drain_signalfd, sigfd)

        ours, theirs = Channel.pair()
        stack.callback(ours.close)
        me = os.getpid()
        holder = os.fork()
        if holder == 0:
            ours.close()
            try:
                holder_main(config, theirs, me)
            finally:
                os._exit(125)
        theirs.close()
        stack.callback(_end_holder, holder)

        ready = _expect(ours, NsReady)
        init_pid = ready.init_pid
        holder_pid = ready.holder_pid
        netns_fd = os.open(f"/proc/{holder_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        stack.callback(os.close, netns_fd)
        target = Target(pid=holder_pid, rootful=config.rootful, netns_fd=netns_fd, calls=SandboxCalls(ours),
                        tools=config.tools, policy_decider=_policy_decider(config))

        handle = backend.start(target, config, probe)
        stack.callback(handle.stop)
        network = handle.wait_ready(READY_TIMEOUT)
        if capture is not None:
            capture.attach(target.calls, network, holder_pid)
            # Stopped before the backend is, so the last packets still arrive.
            stack.callback(_end_capture, capture, outcome)
        if handle.enforces_policy:
            # No nftables: the backend's own engine judges each new flow.
            outcome.notes.append(f"network policy enforced by {backend.name}'s engine (no nftables): "
                                 "--allow hostnames resolved at start only, no flow counts")
        elif setup.policy_flags(config) or config.summary:
            from netwrap.policy.runtime import PolicyEngine

            outcome.policy = PolicyEngine.prepare(config, target.calls, network, nft=nft)
            if outcome.policy is not None:
                # After the command, before the backend stops: the last flows are read in the sandbox.
                stack.callback(outcome.policy.stop)
        dns_path = None
        dns_nft = nft or config.tools.nft
        if not handle.enforces_policy and dns_nft is not None:
            from netwrap.dns import path as dns_path_module

            if dns_path_module.wanted(config):
                learn = outcome.policy.learn if outcome.policy is not None and outcome.policy.policy.hostnames else None
                dns_path = dns_path_module.DnsPath.prepare(config, target.calls, network, nft=dns_nft, on_learn=learn)
                # Stopped before the policy (the stack unwinds in reverse): no answer is learned after it.
                stack.callback(dns_path.stop)
        scratch = make_private_dir("setup")
        stack.callback(remove_private_dir, scratch)
        plan = setup.prepare(config, network, scratch, backend=backend.name, nft=nft)
        outcome.resolvers = plan.resolvers
        if outcome.policy is not None:
            plan = outcome.policy.merge(plan)
            outcome.policy.start()
        if dns_path is not None:
            plan = dns_path.merge(plan)
            dns_path.start()  # the DNS proxy serves before the command's first query
        if capture is not None:
            capture.begin()
        _send(ours, BackendReady(plan=plan))
        _expect(ours, Started)
        remove_private_dir(scratch)  # init's bind mounts keep what it needs
        outcome.started = True
        outcome.exit_status = _main_loop(ours, sigfd, init_pid, holder, handle, outcome)
    return outcome


def _policy_decider(config: Config) -> Callable[[NetworkInfo], Decide] | None:
    """The run's policy for a backend that judges flows in its own engine; None without one."""
    if not setup.policy_flags(config):
        return None

    def decider(network: NetworkInfo) -> Decide:
        from netwrap.policy.startup import start_time_decide  # only a backend without nftables asks

        return start_time_decide(config, network)

    return decider


def _end_capture(capture, outcome: Outcome) -> None:
    """Stop the capture (once; later calls are no-ops) and say what went wrong with it."""
    if outcome.captures:
        return
    from netwrap.capture.session import report_errors

    outcome.captures = capture.stop()
    report_errors(outcome.captures, sys.stderr)


def _send(chan: Channel, msg: Message) -> None:
    try:
        chan.send(msg)
    except OSError:
        # The sandbox is gone; the reason is usually queued on the channel.
        _expect(chan, Started)
        raise NetwrapError("the sandbox ended during setup") from None


def _expect(chan: Channel, kind: type[M]) -> M:
    try:
        msg, fds = chan.expect(kind)
    except ChannelClosed:
        raise NetwrapError("the sandbox ended during setup") from None
    except SandboxError as exc:
        raise NetwrapError(str(exc)) from None
    for fd in fds:
        os.close(fd)
    return msg


def _main_loop(chan: Channel, sigfd: int, init_pid: int, holder: int, handle, outcome: Outcome) -> int:
    chan_open = True
    backend_reported = False
    while True:
        fds = [sigfd]
        if chan_open:
            fds.append(chan.fileno())
        if handle.fileno() is not None:
            fds.append(handle.fileno())
        try:
            readable, _, _ = select.select(fds, [], [])
        except InterruptedError:
            continue
        if handle.fileno() in readable:
            handle.on_readable()
        if chan_open and chan.fileno() in readable:
            try:
                msg, _ = chan.expect(Exited)  # nothing else may come now (ProtocolError)
                return exit_code(msg.status)
            except ChannelClosed:
                chan_open = False
            except SandboxError as exc:  # init itself failed while the command ran
                raise NetwrapError(str(exc)) from None
        if sigfd in readable:
            signo, code, _sender = syscalls.read_signalfd(sigfd)
            if signo != signal.SIGCHLD:
                if code != syscalls.SI_KERNEL:
                    syscalls.signal_if_alive(init_pid, signo)
                continue
        # SIGCHLD or a closed channel: has the sandbox or the backend ended?
        status = _try_reap(holder)
        if status is not None:
            return exit_code(status)
        if not backend_reported and handle.poll() is not None:
            backend_reported = True
            outcome.notes.append(f"backend {outcome.backend} exited early: {handle.diagnostics() or 'no output'}")
            sys.stderr.write(f"netwrap: warning: backend {outcome.backend} exited; the sandbox has no network\n")


def _try_reap(pid: int) -> int | None:
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    return status if done else None


def _end_holder(pid: int) -> None:
    """The holder normally exits with the command; force it if not."""
    if wait_pid(pid, 1.0) is None:
        syscalls.signal_if_alive(pid, signal.SIGKILL)
        wait_pid(pid, 5.0)

