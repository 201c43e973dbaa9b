"""`wardkey …` (also `python -m app …`): the operator's commands, one module per group.

Each group module (`policy`, `db`, `audit`, `serve` with `socket`, `worker`, `revoke`, `inbox`,
`report`, `demo`) adds its commands to the parser with `add_commands`; what they share is in
`app.cli.common`. Building the parser loads no more than these: each command imports what it
runs inside its handler (and `app.cli.configured` for a set-up WardKey), so the help and the
commands that need little answer without loading Slack, the store or the scheduler.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Sequence

from app import __version__
from app.cli import audit, db, demo, inbox, policy, report, revoke, serve, worker

# In the order `wardkey --help` lists them.
GROUPS = (policy, db, audit, serve, worker, revoke, inbox, report, demo)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    # APScheduler logs two lines per run of each job, and the expiry sweep runs every second.
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    # Alembic logs each of its plugins as it is imported, which a command does after this.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`wardkey audit export | head -3`): stop quietly, as other
        # command-line tools do, and say by the exit code that the output was cut short.
        _quiet_stdout()
        return BROKEN_PIPE
    return code


BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a tool that a closed pipe stopped


def _quiet_stdout() -> None:
    """Point standard output at /dev/null, so Python's flush at exit finds no closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file (a test's capture): nothing will be flushed at exit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wardkey", description="Just-in-time privileged access for hospital teams."
    )
    parser.add_argument("--version", action="version", version=f"wardkey {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(commands)
    return parser


__all__ = ["BROKEN_PIPE", "build_parser", "main"]
