"""`netwrap [OPTIONS] [--] COMMAND [ARGS...]`, `netwrap backends`, `netwrap doctor`: the entry point.

Parsing lives in netwrap.cli.options; this module turns its outcome, or an
error, into an exit status.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn, Sequence

from netwrap.cli.options import parse
from netwrap.errors import EXIT_FAILURE, EXIT_USAGE, NetwrapError, UsageError


def main(argv: Sequence[str] | None = None) -> NoReturn:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in ("backends", "doctor"):
            sys.exit(_subcommand(argv[0], argv[1:]))
        parsed = parse(argv)
        if parsed == "doctor":
            sys.exit(_subcommand("doctor", []))
        _exit_now(_run(parsed))
    except UsageError as exc:
        _say(f"error: {exc}")
        sys.exit(EXIT_USAGE)
    except NetwrapError as exc:
        _say(str(exc))
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(130)


def _exit_now(status: int) -> NoReturn:
    """End a run without the interpreter's teardown.

    By now every resource of the run has been released by its owner (the
    run's ExitStack), so unwinding modules and collecting garbage only adds
    about 10 ms to every `netwrap -- cmd`. Output is flushed first.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken pipe: nothing more can be said there
    os._exit(status)


def _say(line: str) -> None:
    sys.stderr.write(f"netwrap: {line}\n")
    sys.stderr.flush()


def _subcommand(name: str, rest: list[str]) -> int:
    if rest and rest[0] in ("-h", "--help"):
        print(f"usage: netwrap {name} [--helper-path DIR[:DIR...]]")
        if name == "backends":
            print("       netwrap backends --names    (the names --backend takes, one a line; nothing probed)")
        return 0
    if name == "backends" and rest == ["--names"]:
        # For shell completion: fast, and plugins' names come from the same registry as a run's.
        from netwrap import backends

        print("\n".join(["auto", *backends.names()]))
        return 0
    # The one option these take: the lookup whose result they report.
    if rest and rest[0].startswith("--helper-path="):
        rest = ["--helper-path", rest[0].partition("=")[2], *rest[1:]]
    if rest and rest[0] == "--helper-path":
        if len(rest) < 2:
            raise UsageError("--helper-path needs DIR[:DIR...]")
        from netwrap.cli.options import use_helper_path

        use_helper_path(rest[1])
        rest = rest[2:]
    if rest:
        raise UsageError(f"'netwrap {name}' takes no arguments (got {rest[0]!r})")
    if name == "backends":
        from netwrap.cli.doctor import list_backends

        return list_backends(sys.stdout)
    from netwrap.cli.doctor import doctor

    return doctor(sys.stdout)


def _run(config) -> int:
    from netwrap import backends
    from netwrap.linux import commands
    from netwrap.sandbox import setup

    commands.verbosity = config.verbosity
    from netwrap.sandbox.supervisor import run
    from netwrap.cli.summary import report

    try:
        backend, probe = backends.select(config.backend)
        nft = setup.check(config, backend.name)
        backends.check_capabilities(backend, config)
    except (UsageError, NetwrapError):
        # Refused before anything started: the output files parse created go.
        from netwrap.linux import userfiles

        userfiles.discard(config.outputs, identity=config.output_identity)
        raise
    outcome = run(config, backend, probe, nft=nft)
    if config.summary:
        report(config, outcome, sys.stderr)
    return outcome.exit_status if outcome.exit_status is not None else EXIT_FAILURE
