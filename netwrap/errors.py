"""Errors that decide netwrap's exit status.

UsageError: bad input found before anything started (exit 2, one line).
NetwrapError: netwrap itself failed while setting up or running (exit 125).
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_FAILURE = 125
EXIT_NOT_EXECUTABLE = 126
EXIT_NOT_FOUND = 127


class UsageError(Exception):
    """Bad flags, specs, files or addresses: reported before anything starts."""

    exit_status = EXIT_USAGE


class NetwrapError(Exception):
    """netwrap could not do its job (missing binary, backend died, ...)."""

    exit_status = EXIT_FAILURE
