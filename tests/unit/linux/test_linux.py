"""The signalfd helpers the parent's main loop relies on, and the privilege drops before the command's exec."""

from __future__ import annotations

import os
import signal

import pytest

from netwrap.linux import syscalls
from privileges import REAL_ROOT


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
    # The signal is sent to the process: a thread that does not block it (one
    # another test left running) would take it, and its default action ends
    # the whole run. With a handler, such a stray delivery fails this test.
    old_handler = signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
    fd = syscalls.signalfd([signal.SIGUSR2])
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert syscalls.read_signalfd(fd) == (signal.SIGUSR2, syscalls.SI_USER, os.getpid())
    finally:
        os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGUSR2, old_handler)


def _status_in_child(prepare) -> dict[str, str]:
    """/proc/self/status of a forked child after `prepare()` ran in it (the kernel's own report)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            prepare()
            with open("/proc/self/status", "rb") as f:
                os.write(w, f.read())
            os._exit(0)
        except BaseException as exc:
            os.write(w, f"error: {exc!r}".encode())
            os._exit(1)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0, text
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_no_new_privs_is_set_as_the_kernel_reports_it():
    status = _status_in_child(syscalls.set_no_new_privs)
    assert status["NoNewPrivs"].strip() == "1"


@pytest.mark.skipif(not REAL_ROOT, reason="securebits need CAP_SETPCAP, and the test switches to uid 65534 (real root)")
def test_capabilities_dropped_for_a_command_that_holds_nothing():
    from netwrap.sandbox.init import COMMAND_SECUREBITS

    def prepare():
        syscalls.clear_inheritable_capabilities()
        syscalls.clear_ambient_capabilities()
        syscalls.set_securebits(COMMAND_SECUREBITS)
        # linux/securebits.h: NOROOT 0x1, NOROOT_LOCKED 0x2, NO_SETUID_FIXUP_LOCKED 0x8,
        # NO_CAP_AMBIENT_RAISE 0x40 and its lock 0x80.
        assert syscalls.prctl_get(syscalls.PR_GET_SECUREBITS) == 0x1 | 0x2 | 0x8 | 0x40 | 0x80
        os.setuid(65534)  # the setuid fixup still empties the sets (not locked off)

    status = _status_in_child(prepare)
    assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
    assert int(status["CapPrm"], 16) == 0 and int(status["CapEff"], 16) == 0


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
