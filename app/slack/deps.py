"""The Slack shell's part of what listeners need, built once per app: the directory, the pools
that run work after the ack, and how far a redelivered request's work got. What a feature's
listeners need beyond it (its services, the notifier) is composed outside the shell
(app/listeners.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

from slack_bolt import BoltContext
from sqlalchemy.exc import SQLAlchemyError

from app.directory import SlackDirectory
from app.slack import intake
from app.slack.commands import JitCommands
from app.slack.errors import answered

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shell:
    directory: SlackDirectory
    work: Executor
    dialogs: Executor
    # False in the app that redelivers recorded requests after a crash: it checks no
    # signature, asks Slack nothing at start, and opens no dialogs (their trigger_ids have
    # long expired, and the person already had their answer).
    live: bool = True
    # `/jit`'s subcommands, each added by the feature whose it is when it registers.
    jit: JitCommands = field(default_factory=JitCommands)

    def after_ack(self, context: BoltContext, job: Callable[[], None]) -> None:
        """Do `job` after the ack of the request in `context`, answering the person who asked
        when it is refused or fails (app/slack/errors.py)."""
        self.later(answered(job, context))

    def later(self, job: Callable[[], None]) -> None:
        """Do `job` after the ack, on the work pool, so the ack never waits for Slack API
        calls, adapters or other requests' work. For a request recorded in the inbox (every
        one over HTTP) the job is collected on it and run once the inbox row is claimed, so
        it is done even if this process dies first (app/slack/intake.py)."""
        pending = intake.current()
        if pending is not None:
            pending.jobs.append(job)
            if pending.executor is None:
                pending.executor = self.work
            return
        self.work.submit(_guarded(job))

    def open_dialog(self, context: BoltContext, job: Callable[[], None]) -> None:
        """Run `job`, which opens a modal, on a pool of its own: its trigger_id expires 3 s after
        the click, so it must never queue behind cards and adapter calls in the work pool.
        Never recorded: a dialog that could not open is opened again by clicking again. A
        refusal is answered to the person who asked, as after_ack's are."""
        if self.live:
            self.dialogs.submit(_guarded(answered(job, context, retried=False)))

    def progress(self) -> Progress:
        """How far earlier tries of the request being dispatched got; read it in the listener
        (on the dispatching thread) and hand it to the work after the ack."""
        return Progress(intake.current())


# Steps a request's work records on its inbox row, so a redelivery skips what is done.
APPLIED = "applied"  # the service call committed
NOTIFIED = "notified"  # and everyone was told
OPENED = "opened:"  # a request was made: "opened:42" (a redelivery answers about #42)


class Progress:
    """How far the request's work got: `outcome` is the last step an earlier try recorded
    (None on a first try), `step()` records the next one on the inbox row."""

    def __init__(self, pending: intake.Pending | None) -> None:
        self._pending = pending
        self.outcome = pending.outcome if pending is not None else None
        self.redelivered = pending is not None and pending.redelivered

    def step(self, outcome: str) -> None:
        self.outcome = outcome
        pending = self._pending
        if pending is None or pending.note is None:
            return
        try:
            pending.note(outcome)
        except SQLAlchemyError as exc:  # a redelivery redoes the step, which is idempotent
            log.warning(
                "event=intake_step_unrecorded step=%s error=%s", outcome, type(exc).__name__
            )


def _guarded(job: Callable[[], None]) -> Callable[[], None]:
    """`job`, with its failure logged (the pool would keep it silently in a future nobody
    reads). Used where no inbox row carries the work (Socket Mode's dialogs, tests)."""

    def run() -> None:
        try:
            job()
        except Exception:
            log.exception("event=after_ack_failed job=%s", getattr(job, "__name__", job))

    return run
