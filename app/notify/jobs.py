"""The outbox's job, every second (the expiry cadence): send the Slack messages waiting in the
outbox (those whose process died, or that wait out a Slack error), so any serve or worker
delivers them. Each row is claimed, so two processes never send one message twice."""

from __future__ import annotations

from typing import Protocol

from app.jobs import Job


class Deliveries(Protocol):
    """The Slack outbox (app/notify/outbox.py `Outbox`)."""

    def tick(self) -> int:
        """One delivery round; returns the rows finished here."""
        ...


class Needs(Protocol):
    """What the outbox's job is given (app/scheduler `JobDeps`)."""

    @property
    def outbox(self) -> Deliveries | None:
        """Where the messages wait; None: nobody is told."""
        ...


def deliver(given: Needs) -> int:
    """Send the Slack messages waiting in the outbox."""
    return given.outbox.tick() if given.outbox is not None else 0


JOBS = (Job("deliver", "expiry", deliver),)
