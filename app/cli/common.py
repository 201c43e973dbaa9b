"""What the command groups share, and all they import before a command runs: the `Commands`
each group adds to, start-up problems as one line (`starting`), a clean stop on SIGTERM, and
writing a command's output.

A group module imports only this (and the standard library) at its top; each command imports
what it runs when it runs, so `wardkey --help`, a group's help and the commands that need little
(`policy check`, `policy schema`, a start-up problem) do not load Slack, the store and every
adapter. What needs a set-up WardKey (its policy, its database, the runtime) is in
`app.cli.configured`."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from app.clock import Clock, SystemClock
from app.startup import StartupError

# The `wardkey` command's subcommands, to which each group adds its own.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def starting(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Start-up problems become one line saying what to set, not a traceback."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except StartupError as exc:
            print(f"wardkey: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:
            # Only a command that opened the database meets its errors, so the store is
            # imported when something went wrong, not by every command.
            from app.cli.configured import database_unreachable
            from app.config import Settings
            from app.store.db import is_database_error

            if not is_database_error(exc):
                raise
            # One line, within the connect time-out, not a traceback or a hang.
            print(f"wardkey: {database_unreachable(Settings().database_url, exc)}", file=sys.stderr)
            return 2

    return wrapped


# After SIGTERM and the clean-up, how long work still running may go on before the process ends.
STOP_SECONDS = 2.0


def stop_on_sigterm(what: str, stop: Callable[[], None] | None = None) -> None:
    """Kubernetes and systemd stop a process with SIGTERM, which by default ends it on the
    spot. Ended cleanly instead, so the `finally` blocks run (the inbox's last beat, the
    outbox's messages in flight): `stop` is called on a thread of its own (never in the
    handler, which may have interrupted code holding a lock), or, without one, SystemExit is
    raised in the main thread as Ctrl-C would (waitress then finishes the requests it is
    answering). Nothing depends on it: claims lapse and are taken over."""

    def on_sigterm(_signum: int, _frame: object) -> None:
        logging.getLogger("app.cli").warning("event=stopping signal=SIGTERM process=%s", what)
        if stop is None:
            raise SystemExit(0)
        threading.Thread(target=stop, name="stopping", daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)


def keep_start_up_out_of_collections() -> None:
    """Once start-up has built what lives as long as the process (modules, the policy, the
    Slack app), move it out of the garbage collector's reach: a full collection walks every
    object the process holds and stops every thread while it does (50-75 ms in `serve`,
    bench/ack_latency.py), so each one that fell in a burst of acks showed in their p99."""
    gc.collect()
    gc.freeze()


def end_within(seconds: float) -> None:
    """After a clean stop: work still running on other threads (a sweep's call to a target
    that hangs) has `seconds` to finish, then the process ends anyway, as SIGKILL would have
    ended it; that work's claims lapse and another process takes it over."""

    def end() -> None:
        logging.getLogger("app.cli").warning("event=stopped_with_work_running")
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, end)
    timer.daemon = True  # an exit that comes sooner does not wait for it
    timer.start()


def clock_of(args: argparse.Namespace) -> Clock:
    """Tests put a ManualClock on the parsed arguments; from the command line it is the system's."""
    clock: Clock | None = getattr(args, "clock", None)
    return clock or SystemClock()


def write_output(text: str, output: Path | None) -> int:
    """`text` to the --output file, else to standard output; 2 when the file cannot be written."""
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"wardkey: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0
