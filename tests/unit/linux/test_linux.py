"""The signalfd helpers the parent's main loop relies on."""

from __future__ import annotations

import os
import signal

from netwrap.linux import syscalls


def test_drained_signals_do_not_fire_when_the_mask_is_restored():
    fired = []
    old_handler = signal.signal(signal.SIGUSR1, lambda *a: fired.append(a[0]))
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    fd = syscalls.signalfd([signal.SIGUSR1])
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signal.SIGUSR1 in signal.sigpending()
        syscalls.drain_signalfd(fd)
        assert signal.SIGUSR1 not in signal.sigpending()
    finally:
        os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGUSR1, old_handler)
    assert fired == []


def test_read_signalfd_reports_signal_code_and_sender():
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
    fd = syscalls.signalfd([signal.SIGUSR2])
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert syscalls.read_signalfd(fd) == (signal.SIGUSR2, syscalls.SI_USER, os.getpid())
    finally:
        os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def test_signal_if_alive_signals_a_live_process_and_ignores_a_gone_one():
    child = os.fork()
    if child == 0:
        signal.pause()
        os._exit(0)
    # SIGKILL: SIGTERM may be ignored or blocked in what this test inherited.
    syscalls.signal_if_alive(child, signal.SIGKILL)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    syscalls.signal_if_alive(child, signal.SIGKILL)  # reaped: ESRCH is not an error
