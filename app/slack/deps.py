"""What the listeners need, built once per app."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from app.notify.notifier import Notifier
from app.service import AccessService
from app.slack.people import SlackDirectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlackDeps:
    service: AccessService
    directory: SlackDirectory
    notifier: Notifier
    work: Executor

    def after_ack(self, job: Callable[[], None]) -> None:
        """Run `job` on the work pool, so the ack goes back at once and never waits for Slack
        API calls, adapters or other requests' work."""

        def run() -> None:
            try:
                job()
            except Exception:  # the pool would keep it silently in a future nobody reads
                log.exception("event=after_ack_failed job=%s", getattr(job, "__name__", job))

        self.work.submit(run)
