"""What the listeners need, built once per app."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from slack_bolt import BoltContext

from app.notify.notifier import Notifier
from app.policy.people import Person
from app.service import AccessService
from app.slack import replay_gate
from app.slack.gate import caller
from app.slack.people import SlackDirectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlackDeps:
    service: AccessService
    directory: SlackDirectory
    notifier: Notifier
    work: Executor
    dialogs: Executor

    def person(self, context: BoltContext) -> Person:
        """The person who sent this request, from the caller the workspace gate read (the one
        source of who is asking), checked against their Slack account; or NotAllowed."""
        who = caller(context)
        return self.directory.person(who.user_id, who.request_team_id, who.enterprise_id)

    def after_ack(self, job: Callable[[], None]) -> None:
        """Run `job` on the work pool, so the ack goes back at once and never waits for Slack
        API calls, adapters or other requests' work."""
        self.work.submit(_guarded(job))

    def open_dialog(self, job: Callable[[], None]) -> None:
        """Run `job`, which opens a modal, on a pool of its own: its trigger_id expires 3 s after
        the click, so it must never queue behind cards and adapter calls in the work pool."""
        self.dialogs.submit(_guarded(job))


def _guarded(job: Callable[[], None]) -> Callable[[], None]:
    """`job`, run only once the request that caused it is known not to be a replay, and with
    its failure logged."""
    verdict = replay_gate.current()  # read on the HTTP thread, where the listener runs

    def run() -> None:
        if not replay_gate.is_new(verdict):
            return
        try:
            job()
        except Exception:  # the pool would keep it silently in a future nobody reads
            log.exception("event=after_ack_failed job=%s", getattr(job, "__name__", job))

    return run
